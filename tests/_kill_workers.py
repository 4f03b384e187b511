"Callbacks that the resume tests hand to workers by name ('module:function'), so they live in an importable module."
import os
import signal


def kill_rank0_at_5(trainer, metrics):
    "fit callback: rank 0, the bundle's writer, dies by SIGKILL after step 5 (the launcher then stops the others)."
    import torch.distributed as dist
    if metrics["step"] == 5 and dist.get_rank() == 0:
        os.kill(os.getpid(), signal.SIGKILL)


def raise_at_3(trainer, metrics):
    "fit callback: rank 0 raises after step 3 (an error in the training loop, not a kill)."
    import torch.distributed as dist
    if metrics["step"] == 3 and dist.get_rank() == 0:
        raise RuntimeError("planted failure after step 3")
