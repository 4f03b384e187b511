"Callbacks that the resume tests hand to workers by name ('module:function'), so they live in an importable module."
import os
import signal


def kill_job_at_5(trainer, metrics):
    "fit callback: after step 5, rank 0 kills its whole process group with SIGKILL (the launcher and every worker)."
    import torch.distributed as dist
    if metrics["step"] == 5 and dist.get_rank() == 0:
        os.killpg(os.getpgid(0), signal.SIGKILL)
