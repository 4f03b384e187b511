"""Distributed training: what each rank's step sends and where its time goes, for the exact mode against per-rank
statistics and for the flat gradient all-reduce against the overlapped one (grad_sync="overlap", D-dist-11).

Builds one trainer per variant (synthetic latents, a small random ResNet feature encoder, the preset's generator),
writes its job folder, and runs `--steps` steps on `--nproc` local workers through torch's elastic launcher. The
first step of each run (warm-up) is left out of the times. Per step and rank it prints the gradient bytes and
all-reduce calls, the drift-loss statistics' bytes and calls, and for the gradients: the time in flight (the union
of the all-reduces' times from the start of the send to completion, on the host), the share of it hidden behind the
backward pass (before the backward pass ended), the host time the hooks spent flattening and sending buckets (the
backward pass waits for it, so at least hidden − hooks overlapped computation) and the exposed wait after the
backward pass. The flat path's one all-reduce starts after the backward pass: all of it is exposed. On CUDA (NCCL)
a collective completes on its stream, not on the host: only the exposed wait and the step time are measured there.

    python bench/dist_step.py [--nproc 2] [--steps 6] [--n-c 8] [--preset cpu] [--bucket-mb 25 0.02]
    python bench/dist_step.py --cpu --preset tiny     # gloo on the CPU even where CUDA is available
"""
import argparse, os, tempfile

import torch

from drifting.data import ImageDataset
from drifting.distributed import fit_worker, launch, save_job
from drifting.feature_nets import build_features
from drifting.mae import ResNetEncoder, save_encoder
from drifting.streams import data_stream
from drifting.train import Trainer, train_config


def build(preset, n_c, grad_sync, enc):
    shape, classes = ((2, 8, 8), 5) if preset == "tiny" else ((4, 16, 16), 10)
    g = torch.Generator().manual_seed(0)
    ds = ImageDataset(torch.randn(2000, *shape, generator=g), torch.arange(2000) % classes,
                      [str(i) for i in range(classes)], "synthetic", f"bench-synthetic-{preset}")
    # the encoder is an export folder the config names: the job's workers rebuild the feature space from the config
    cfg = train_config(preset, n_c=n_c, push_per_step=max(64, n_c), feature_encoder=enc, every_k_block=1,
                       grad_sync=grad_sync)
    return Trainer(cfg, data_stream(cfg, ds), build_features(cfg, ds, "cpu", progress=False)[0], "cpu")


def per_step(r):
    "One rank's result as per-step figures (the warm-up step left out of the step time)."
    n = len(r["hist"]["seconds"])
    gt = r["grad_timing"]
    return dict(step_s=sum(r["hist"]["seconds"][1:]) / (n - 1), grad_mb=r["bytes"]["grads"] / n / 1e6,
                grad_calls=r["calls"]["grads"] / n, stats_b=r["bytes"]["stats"] / n,
                stats_calls=r["calls"]["stats"] / n, flight_ms=gt["in_flight"] / n * 1e3,
                hidden=gt["hidden"] / gt["in_flight"] if gt["in_flight"] else None,
                # at least this share overlapped computation: the hooks' own time stalls the backward pass
                behind=max(0.0, gt["hidden"] - gt["launch"]) / gt["in_flight"] if gt["in_flight"] else None,
                exposed_ms=r["comm_seconds"]["grads"] / n * 1e3, early=gt["early"] / n,
                launch_ms=gt["launch"] / n * 1e3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--n-c", type=int, default=8)
    ap.add_argument("--preset", default="cpu", help="a TRAIN_PRESETS name (its generator); tiny: 2×8×8 latents")
    ap.add_argument("--bucket-mb", type=float, nargs="+", default=[25.0, 0.02],
                    help="bucket sizes of the overlapped runs (25: DDP's default; small ones cut a small model up)")
    ap.add_argument("--cpu", action="store_true", help="gloo on the CPU even where CUDA is available")
    a = ap.parse_args()
    if a.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the workers inherit it: gloo, CPU tensors
    torch.manual_seed(0)
    width = 8 if a.preset == "tiny" else 16
    enc = str(save_encoder(ResNetEncoder(in_channels=2 if a.preset == "tiny" else 4, width=width, blocks=(1, 1, 1, 1)),
                           tempfile.mkdtemp()))
    runs = [("exact", "flat", None), ("per_rank", "flat", None)] + [("exact", "overlap", b) for b in a.bucket_mb]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, sync, mb in runs:
            t = build(a.preset, a.n_c, sync, enc)
            if not rows:
                n_par = sum(p.numel() for p in t.gen.parameters())
                print(f"{a.nproc} ranks, {'gloo on CPU' if a.cpu or not torch.cuda.is_available() else 'NCCL'}; "
                      f"preset {a.preset}, generator {n_par / 1e6:.3f}M parameters ({4 * n_par / 1e6:.3f} MB of fp32 "
                      f"gradients); N_c={t.cfg.n_c} (× N_neg={t.cfg.n_neg} = {t.cfg.n_c * t.cfg.n_neg} samples per "
                      f"step); {a.steps} steps, first left out of the step time")
            d = save_job(os.path.join(tmp, f"{mode}-{sync}-{mb}"), t)
            job = dict(build="drifting.distributed:build_trainer", kwargs=dict(folder=str(d)), steps=a.steps, mode=mode)
            if mb is not None:
                job["bucket_mb"] = mb
            name = f"{mode}/{sync}" + (f" {mb:g} MiB" if mb is not None else "")
            for r in launch(fit_worker, a.nproc, job):
                s = rows[name, r["rank"]] = per_step(r)
                hid = "-" if s["hidden"] is None else f"{100 * s['hidden']:.0f}% (≥ {100 * s['behind']:.0f}%"
                hid += "" if s["hidden"] is None else " behind compute)"
                print(f"{name:22s} rank {r['rank']}: {s['step_s']:.3f} s/step | grads {s['grad_mb']:.3f} MB in "
                      f"{s['grad_calls']:.0f} all-reduce(s), {s['early']:.0f} sent during backward (hooks "
                      f"{s['launch_ms']:.1f} ms); in flight "
                      f"{s['flight_ms']:.1f} ms, hidden {hid}, exposed {s['exposed_ms']:.1f} ms | statistics "
                      f"{s['stats_b']:.0f} B in {s['stats_calls']:.0f} calls")
    mean = lambda name, k: sum(v[k] for (n, _), v in rows.items() if n == name) / a.nproc  # noqa: E731
    ex, pr = mean("exact/flat", "step_s"), mean("per_rank/flat", "step_s")
    print(f"mean step time exact / per-rank statistics: {ex:.3f} / {pr:.3f} s = {ex / pr:.2f}x")
    for mb in a.bucket_mb:
        name = f"exact/overlap {mb:g} MiB"
        print(f"{name}: {mean(name, 'step_s'):.3f} s/step ({mean(name, 'step_s') / ex:.2f}x flat); exposed gradient "
              f"wait {mean(name, 'exposed_ms'):.1f} ms vs flat {mean('exact/flat', 'exposed_ms'):.1f} ms")


if __name__ == "__main__":
    main()
