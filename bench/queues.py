"""Throughput of `drifting.queues`: push and sample, at the paper's queue sizes.

Usage:

    .venv/bin/python bench/queues.py                       # 1000 classes x 128, items 4x32x32 float32, batch 256
    .venv/bin/python bench/queues.py --quick               # 100 classes: a smoke run
    .venv/bin/python bench/queues.py --device cuda --baseline

Setup: per-class queues of `--capacity` items for `--classes` classes (the paper's 1000 x 128; 2.1 GB of float32
latents) plus the global queue of 1000. "push" = `SampleQueues.push` of `--batch` items with uniformly random labels
(into both queues, as in training), timed first while filling the empty queues and then once they are full.
"sample" = `--batch` items per call, drawn as `--batch/64` classes x 64 positives (without replacement), and as
`--batch/32` groups x 32 unconditional items; plus one training step's worth (128 classes x 64 positives).
`--baseline` also times a per-sample Python loop push (how the release fills its banks) for comparison.
Numbers are items per second (median of repeated timings); the machine's load average is printed alongside because
other processes on a shared machine change them a lot.
"""
from __future__ import annotations

import argparse, os, statistics, time

import torch

from drifting.queues import SampleQueues


def timeit(fn, reps, sync):
    "Median seconds per call of `fn` over `reps` calls (after one warm-up call)."
    fn(); sync()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); sync(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def loop_push(q, items, labels):
    "Per-sample Python loop into the same ring buffer: the release's way of adding to its banks."
    for i in range(labels.shape[0]):
        c = int(labels[i]); p = int(q.ptr[c])
        q.items[c, p] = items[i]; q.labels[c, p] = c
        q.ptr[c] = (p + 1) % q.capacity
        q.count[c] = min(int(q.count[c]) + 1, q.capacity)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--capacity", type=int, default=128)
    ap.add_argument("--uncond", type=int, default=1000)
    ap.add_argument("--item-shape", type=int, nargs="+", default=[4, 32, 32])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--baseline", action="store_true", help="also time a per-sample Python loop push")
    ap.add_argument("--quick", action="store_true", help="100 classes, 10 repetitions")
    a = ap.parse_args()
    if a.quick: a.classes, a.reps = 100, 10
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    shape = tuple(a.item_shape)
    gen = torch.Generator(dev).manual_seed(0)
    item_mb = torch.tensor([], dtype=torch.float32).element_size() * torch.Size(shape).numel() / 2**20

    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} (shared machine: numbers vary with other load)")
    print(f"queues: {a.classes} classes x {a.capacity} + global {a.uncond}, items {shape} float32 "
          f"({a.classes * a.capacity * item_mb / 1024:.2f} GB), batch {a.batch}")
    q = SampleQueues(a.classes, shape, a.capacity, a.uncond, device=dev)
    batches = [(torch.randn(a.batch, *shape, device=dev, generator=gen),
                torch.randint(0, a.classes, (a.batch,), device=dev, generator=gen)) for _ in range(8)]

    # first timing: pushes into the empty queues; then every class queue is filled and the push timed again
    i = [0]
    def push():
        x, l = batches[i[0] % len(batches)]; i[0] += 1
        q.push(x, l)
    t_fill = timeit(push, a.reps, sync)
    fill = torch.arange(a.classes, device=dev).repeat_interleave(a.capacity)
    for s in range(0, fill.numel(), 4096):
        l = fill[s:s + 4096]
        q.push(torch.randn(l.numel(), *shape, device=dev, generator=gen), l)
    sync()
    assert int(q.pos.count.min()) == a.capacity
    t_full = timeit(push, a.reps, sync)
    rows = [("push (filling)", a.batch, t_fill), ("push (full queues)", a.batch, t_full)]

    n_cls = max(1, a.batch // 64)
    labs = torch.randint(0, a.classes, (n_cls,), device=dev, generator=gen)
    rows.append((f"sample pos {n_cls} x 64", n_cls * 64, timeit(lambda: q.sample_pos(labs, 64, gen), a.reps, sync)))
    n_grp = max(1, a.batch // 32)
    rows.append((f"sample unc {n_grp} x 32", n_grp * 32, timeit(lambda: q.sample_unc(n_grp, 32, gen), a.reps, sync)))
    labs = torch.randperm(a.classes, device=dev, generator=gen)[:128]
    rows.append(("sample pos 128 x 64 (one step)", 128 * 64,
                 timeit(lambda: q.sample_pos(labs, 64, gen), max(3, a.reps // 5), sync)))
    if a.baseline:
        x, l = batches[0]
        rows.append(("push, per-sample Python loop", a.batch,
                     timeit(lambda: loop_push(q.pos, x, l), max(3, a.reps // 5), sync)))

    print(f"{'operation':34s} {'items/call':>10s} {'ms/call':>9s} {'items/s':>12s} {'MB/s':>9s}")
    for name, n, t in rows:
        print(f"{name:34s} {n:10d} {t * 1e3:9.3f} {n / t:12,.0f} {n * item_mb / t:9.0f}")


if __name__ == "__main__":
    main()
