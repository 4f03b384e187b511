"Functions that the 2-process tests run in each worker (workers import them by name, so they live in a module)."
import copy
import os

import torch

from drifting.distributed import attach, init_distributed, teardown
from drifting.drift_exact import drift_loss

STEPS, HALF = 20, 10
SYNC_STEPS, SYNC_BUCKET_MB = 2, 0.02  # 20 KiB buckets: the tiny generator's 185 KiB of gradients in 12


def drift_inputs(G=8):
    "Fixed features of G groups: generated (with gradient), positives, CFG negatives and their weights."
    g = torch.Generator().manual_seed(5)
    gen = torch.randn(G, 6, 5, generator=g) * 2
    pos, neg = torch.randn(G, 4, 5, generator=g) + 1, torch.randn(G, 3, 5, generator=g)
    w = torch.rand(G, generator=g) * 3
    return gen, pos, neg, w


def trainer(**kw):
    "The tiny trainer with 4 labels a step (2 whole classes per rank on 2 ranks)."
    from _tiny_trainer import tiny_trainer
    return tiny_trainer(**dict(dict(n_c=4, push_per_step=8), **kw))


def _state(m):
    return copy.deepcopy(m.state_dict())


def one_step(t):
    "Train one step; its loss, the (averaged, clipped) gradients it applied and the new weights."
    m = t.step()
    return dict(loss=m["loss"], grad=[p.grad.clone() for p in t.gen.parameters()], model=_state(t.gen))


def sample_setup():
    "A tiny generator, 11 labels (an uneven split over 2 ranks) and a fixed random projection as the feature net."
    from drifting.generator import Generator, generator_config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3); model = Generator(generator_config("tiny")).eval()
    proj = torch.randn(2 * 8 * 8, 6, generator=torch.Generator().manual_seed(9))
    return model, torch.arange(11) % 5, proj


def sharded_samples():
    from drifting.distributed import gather_rows, generate_sharded, share
    import torch.distributed as dist
    model, labels, proj = sample_setup()
    with torch.no_grad(): x = generate_sharded(model, labels, 1.5, seed=4, batch_size=3)
    mine = x[share(len(x), dist.get_rank(), dist.get_world_size())]
    return x, gather_rows(mine.flatten(1) @ proj)  # each rank's features of its share, gathered


def exactness(out: str):
    "Every check of tests/test_distributed.py that needs 2 ranks, in one job (starting workers is the slow part)."
    torch.set_num_threads(1)
    init_distributed("gloo")
    try:
        import torch.distributed as dist
        rank, world = dist.get_rank(), dist.get_world_size()
        res = {}
        # 1. one drift-loss call sharded over the ranks (whole groups each)
        gen, pos, neg, w = drift_inputs()
        sl = slice(rank * len(gen) // world, (rank + 1) * len(gen) // world)
        x = gen[sl].clone().requires_grad_()
        def all_sum(t):
            t = t.clone(); dist.all_reduce(t); return t
        loss, info = drift_loss(x, pos[sl], neg[sl], w_neg=w[sl], all_reduce=all_sum)
        loss.mean().div(world).backward()  # the mean over all groups, as DDP-averaged gradients see it
        res["drift"] = dict(loss=loss.detach(), grad=x.grad, scale=info.scale, v2=info.force_sq)
        # 2. training, exact mode: one step, to HALF (checkpoint), one more step, to STEPS
        t = trainer(); attach(t, "exact")
        res["step1"] = one_step(t)
        t.fit(HALF, progress=False); res["ck_half"] = _state(t)
        res["step_next"] = one_step(t)
        h = t.fit(STEPS, progress=False)
        res["exact"] = dict(loss=h["loss"], model=_state(t.gen), ema=_state(t.ema))
        # 2b. every one of the one process's STEPS steps, taken on 2 ranks from the one process's state before it
        res["forced"] = []
        states = torch.load(os.path.join(out, "states_1p.pt"), weights_only=True)
        t = trainer(); attach(t, "exact")
        for sd in states[:-1]:
            t.load_state_dict(copy.deepcopy(sd)); s = one_step(t)
            res["forced"].append(dict(s, ema=_state(t.ema)))
        # 3. the same world size resumes bit-exactly
        t = trainer(); t.load_state_dict(copy.deepcopy(res["ck_half"]))  # a copy: loading aliases the optimizer state
        attach(t, "exact"); t.fit(STEPS, progress=False)
        res["resumed_same"] = dict(model=_state(t.gen), ema=_state(t.ema))
        # 4. 1 -> 2: a one-process checkpoint continued on 2 ranks
        t = trainer(); t.load_state_dict(torch.load(os.path.join(out, "ck_half_1p.pt"), weights_only=True))
        attach(t, "exact"); res["from_1p"] = one_step(t)
        # 5. per-rank statistics (what most ports do)
        t = trainer(); attach(t, "per_rank"); res["per_rank"] = one_step(t)
        # 6. sampling and features split over the ranks
        res["samples"], res["feats"] = sharded_samples()
        # 7. the overlapped gradient all-reduce against the flat one
        res["sync"] = grad_sync_steps()
        if rank: del res["ck_half"]
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    finally:
        teardown()


def kill_rank1_at_3(trainer, metrics):
    "fit callback: rank 1 dies (SIGKILL) after its 3rd step."
    import signal
    import torch.distributed as dist
    if metrics["step"] == 3 and dist.get_rank() == 1: os.kill(os.getpid(), signal.SIGKILL)


def export_worker(folder: str, vae: str, out: str, kw: dict):
    "One rank of a latent-cache export under a process group (rank r writes shards r, r+W, ...; rank 0 the manifest)."
    torch.set_num_threads(1)
    init_distributed("gloo")
    try:
        from drifting.tokenizer import export_latent_cache, load_vae
        export_latent_cache(folder, load_vae(vae), out, **kw)
    finally:
        teardown()


def pushed_batches(folder: str, steps: int) -> dict:
    "One rank of a job rebuilt from a job folder (`build_trainer`): its stream's first batches and its queues after `steps`."
    torch.set_num_threads(1)
    init_distributed("gloo")
    try:
        from drifting.distributed import build_trainer
        t = build_trainer(folder)
        attach(t, "exact")
        batches = [t.data.batch(i)[0] for i in range(steps)]
        t.fit(steps, progress=False)
        return dict(batches=batches, queues=t.queues.state_dict(), stream=type(t.data).__name__)
    finally:
        teardown()


def grad_sync_steps() -> dict:
    """The flat gradient all-reduce and the overlapped one (grad_sync="overlap") side by side on this rank: SYNC_STEPS
    steps of each from the same initial state, with grad_accum 1 and 2."""
    res = {}
    for ga in (1, 2):
        f, o = trainer(grad_accum=ga), trainer(grad_accum=ga, grad_sync="overlap")
        cf, co = attach(f, "exact"), attach(o, "exact", bucket_mb=SYNC_BUCKET_MB)
        steps = [dict(flat=one_step(f), overlap=one_step(o)) for _ in range(SYNC_STEPS)]
        res[ga] = dict(steps=steps, ema=dict(flat=_state(f.ema), overlap=_state(o.ema)), buckets=len(co.buckets.buckets),
                       flat=dict(calls=cf.calls["grads"], bytes=cf.bytes["grads"]),
                       overlap=dict(calls=co.calls["grads"], bytes=co.bytes["grads"], **co.grad_timing))
    return res
