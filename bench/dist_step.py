"""Distributed training on CPU gloo: bytes all-reduced per step (gradients, drift-loss statistics, logged metrics)
and where each rank's step time goes, exact mode against per-rank statistics.

Builds one trainer (synthetic 4×16×16 latents, 10 classes, a small random ResNet feature encoder, the `cpu`
generator), writes its job folder, and runs `--steps` steps on `--nproc` local workers through torch's elastic
launcher in each mode. The first step of each run (warm-up) is left out of the times.

    .venv/bin/python bench/dist_step.py [--nproc 2] [--steps 6] [--n-c 8]
"""
import argparse, tempfile

import torch

from drifting.data import ImageDataset
from drifting.distributed import fit_worker, launch, save_job
from drifting.feature_nets import build_features
from drifting.mae import ResNetEncoder, save_encoder
from drifting.streams import data_stream
from drifting.train import Trainer, train_config


def build(n_c):
    g = torch.Generator().manual_seed(0)
    ds = ImageDataset(torch.randn(2000, 4, 16, 16, generator=g), torch.arange(2000) % 10, [str(i) for i in range(10)],
                      "synthetic", "bench-synthetic")
    torch.manual_seed(0)
    enc = save_encoder(ResNetEncoder(in_channels=4, width=16, blocks=(1, 1, 1, 1)), tempfile.mkdtemp())
    # the encoder is an export folder the config names: the job's workers rebuild the feature space from the config
    cfg = train_config("cpu", n_c=n_c, push_per_step=max(64, n_c), generator_overrides=dict(input_size=16, in_channels=4),
                       feature_encoder=str(enc), every_k_block=1)
    return Trainer(cfg, data_stream(cfg, ds), build_features(cfg, ds, "cpu", progress=False)[0], "cpu")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--n-c", type=int, default=8)
    a = ap.parse_args()
    t = build(a.n_c)
    n_par = sum(p.numel() for p in t.gen.parameters())
    print(f"{a.nproc} ranks, gloo on CPU; generator {n_par / 1e6:.2f}M parameters; N_c={t.cfg.n_c} "
          f"(× N_neg={t.cfg.n_neg} = {t.cfg.n_c * t.cfg.n_neg} samples per step); {a.steps} steps, first left out")
    with tempfile.TemporaryDirectory() as tmp:
        save_job(tmp, t)
        rows = {}
        for mode in ("exact", "per_rank"):
            res = launch(fit_worker, a.nproc, dict(build="drifting.distributed:build_trainer", kwargs=dict(folder=tmp),
                                                    steps=a.steps, mode=mode))
            for r in res:
                n = len(r["hist"]["seconds"])
                step_s = sum(r["hist"]["seconds"][1:]) / (n - 1)
                per = {k: r["bytes"][k] / n for k in r["bytes"]}
                calls = {k: r["calls"][k] / n for k in r["calls"]}
                comm = {k: r["comm_seconds"][k] / n for k in r["comm_seconds"]}
                rows[mode, r["rank"]] = step_s
                print(f"{mode:8s} rank {r['rank']}: {step_s:.3f} s/step | all-reduced per step: grads {per['grads'] / 1e6:.3f} MB "
                      f"({calls['grads']:.0f} call), statistics {per['stats']:.0f} B ({calls['stats']:.0f} calls), metrics "
                      f"{per['metrics']:.0f} B | in collectives per step: grads {comm['grads'] * 1e3:.1f} ms, statistics "
                      f"{comm['stats'] * 1e3:.1f} ms, metrics {comm['metrics'] * 1e3:.1f} ms "
                      f"(includes waiting for the slower rank)")
        ex = sum(v for (m, _), v in rows.items() if m == "exact") / a.nproc
        pr = sum(v for (m, _), v in rows.items() if m == "per_rank") / a.nproc
        print(f"mean step time exact / per-rank statistics: {ex:.3f} / {pr:.3f} s = {ex / pr:.2f}x")


if __name__ == "__main__":
    main()
