"""Cost of the step diagnostics (#26 item 5) and what a healthy and an attraction-only run show.

The `cpu` preset (the main job's batch: N_c 10, N_pos 32, N_neg 32, N_unc 16) on stand-in latents: the built-in
MNIST-5k digits at 16×16, pixel-unshuffled to 4×8×8 (the built-in VAE's latent shape, no VAE to train), with a
randomly initialised MAE `small` encoder as the feature space (no pre-training; the costs do not depend on its
weights). Prints the step time with and without diagnostics (interleaved, so a busy machine slows both alike) and
the per-group attraction / repulsion RMS at τ = 0.05 every `--every` steps of a healthy and an attraction-only run.

    python bench/watch_diagnostics.py --steps 100 --every 25 --threads 1
"""
import argparse, dataclasses, functools, statistics, time

import torch
import torch.nn.functional as F

import drifting.features as features
from drifting.data import ImageDataset, load_dataset
from drifting.drift import DriftOptions
from drifting.mae import MAE, mae_config
from drifting.streams import data_stream
from drifting.train import Trainer, train_config


def stand_in(cfg):
    px = load_dataset("mnist5k", "train", 16, resize="bilinear")  # [N, 1, 16, 16] pixels in [-1, 1]
    z = F.pixel_unshuffle(px.images, 2)  # [N, 4, 8, 8]
    ds = ImageDataset(z, px.labels, px.class_names, "mnist5k-16-unshuffled", px.fingerprint + ":unshuffle2", kind="latents")
    torch.manual_seed(0)
    enc = MAE(mae_config(cfg.mae_preset, in_channels=4, num_classes=10)).encoder
    fs = features.FeatureSpace(enc, cfg.every_k_block, cfg.patch_sizes, cfg.norm_x, cfg.raw_key, cfg.bf16)
    return ds, fs


def trainer(cfg, ds, fs):
    return Trainer(cfg, data_stream(cfg, ds), fs, "cpu")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--timing", type=int, default=12, help="timed steps of each kind")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = train_config("cpu")
    ds, fs = stand_in(cfg)

    t_off, t_on, x, y = [], [], trainer(cfg, ds, fs), trainer(cfg, ds, fs)
    for i in range(a.timing + 2 if a.timing else 0):
        t0 = time.perf_counter()
        x.step()
        t1 = time.perf_counter()
        m = y.step(diagnostics=True)
        t2 = time.perf_counter()
        if i >= 2:  # warm-up
            t_off.append(t1 - t0)
            t_on.append(t2 - t1)
    if a.timing:
        off, on = statistics.median(t_off), statistics.median(t_on)
        print(f"{len(m['v2'])} keys in {len(m['diag']['groups'])} groups; step {off:.3f} s, with diagnostics "
              f"{on:.3f} s (+{on - off:.3f} s, {100 * (on - off) / off:.0f}%; medians of {a.timing}, {a.threads} thread(s))")

    runs = {"healthy": trainer(cfg, ds, fs)}
    real = features.DriftOptions
    features.DriftOptions = functools.partial(DriftOptions, repulsion=0.0)  # the loss: attraction only (Tab. 1)
    broken = trainer(cfg, ds, fs)
    broken.cfg = dataclasses.replace(broken.cfg)
    broken.cfg.repulsion = 0.0  # the diagnostics read the config's options
    runs["attraction-only"] = broken
    t = cfg.taus.index(0.05)
    for name, tr in runs.items():
        features.DriftOptions = real if name == "healthy" else functools.partial(DriftOptions, repulsion=0.0)
        for s in range(1, a.steps + 1):
            m = tr.step(diagnostics=s % a.every == 0)
            if "diag" in m:
                g = m["diag"]["groups"]
                cells = "  ".join(f"{k} {v['attraction'][t]:.3f}/{v['repulsion'][t]:.3f}" for k, v in g.items())
                print(f"{name:>15} step {s:4d} loss {m['loss']:.2f} v2_total(τ=0.05) {m['v2_total'][t]:.4g}  "
                      f"att/rep: {cells}  queue {m['diag']['queue_coverage']:.2f}/{m['diag']['pos_replaced']:.2f}")
    features.DriftOptions = real


if __name__ == "__main__":
    main()
