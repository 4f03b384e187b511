"""Seconds per step of the `cpu-pixel` preset (the `-p vae None` demo), measured in the same run on the demo's data:
the real items' features computed every step (the release's way) or once (`cache_real_features`, D-speed-4), and
the ConvNeXt-V2 GRN layers with `transformers`' own `vector_norm` or with `official.grn_norm` (D-speed-5).

The feature networks have the demo's architectures (pixel MAE `pixel-small`, the ConvNeXt-V2 stand-in) but are barely
trained (2 steps each): their weights do not change the time of a step. Prints, per setting, the median seconds per
step, the time to build the memo, its size, and the ratios against the first row. Run on an idle machine:

    .venv/bin/python bench/real_features.py [--threads 2] [--steps 20]
"""
import argparse, dataclasses, os, statistics, tempfile, time

import torch

import drifting.feature_nets as feature_nets
from drifting.data import load_dataset
from drifting.feature_nets import build_features
from drifting.official import fast_grn
from drifting.streams import data_stream
from drifting.train import Trainer, train_config


def per_step(trainer: Trainer, steps: int) -> tuple[float, float]:  # (median s/step, seconds of the first step)
    t = time.perf_counter()
    trainer.step()  # the memo, when on, is built here
    first = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        trainer.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times), first


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ["DRIFTING_CACHE"] = tempfile.mkdtemp()  # the 2-step networks stay out of the user's cache
    feature_nets.STANDIN_RECIPE = dataclasses.replace(feature_nets.STANDIN_RECIPE, steps=2)
    ds = load_dataset("mnist5k", "train", resolution=32)
    cfg = train_config("cpu-pixel", mae_steps=2, mae_finetune=0)
    fs, info = build_features(cfg, ds, "cpu", progress=False)
    print(f"{len(ds)} images, {info['summary']}; {a.threads} threads, {a.steps} timed steps")
    grns = [m for m in fs.modules() if type(m).__name__ == "ConvNextV2GRN"]
    ref = None
    for fast, cached in ((False, False), (True, False), (True, True)):
        for m in grns:  # the instance's `forward` is grn_norm's; without it, the class's (transformers')
            if fast:
                fast_grn(m)
            elif "forward" in m.__dict__:
                del m.forward
        tr = Trainer(train_config(cfg, cache_real_features=cached), data_stream(cfg, ds), fs, "cpu")
        s, first = per_step(tr, a.steps)
        ref = ref or s
        memo = tr.memo.describe() if tr.memo is not None else None
        extra = f"; memo {memo['mib']} MiB built in {memo['seconds']} s (first step {first:.1f} s)" if memo else ""
        print(f"GRN {'grn_norm   ' if fast else 'vector_norm'}, cache_real_features={cached!s:5}: {s:.3f} s/step, "
              f"{s / ref:.3f} of the first row, {(ref - s) * cfg.steps / 60:.1f} min saved in {cfg.steps} steps{extra}")


if __name__ == "__main__":
    main()
