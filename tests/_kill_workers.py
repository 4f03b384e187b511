"Callbacks that the resume tests hand to workers by name ('module:function'), so they live in an importable module."
import os
import signal


def kill_rank0_at_5(trainer, metrics):
    "fit callback: rank 0, the bundle's writer, dies by SIGKILL after step 5 (the launcher then stops the others)."
    import torch.distributed as dist
    if metrics["step"] == 5 and dist.get_rank() == 0:
        os.kill(os.getpid(), signal.SIGKILL)
