"""bf16 autocast on the CPU against fp32: the `cpu` preset's training steps both ways (#24 item 8, D-speed-2).

Two trainers of the `cpu` preset start from the same seed and data and train side by side, alternating step by step
(so that a burst of foreign load hits both); one has `bf16=False` (the CPU default, fp32), the other `bf16=True` (the
CPU autocast of the generator and the feature network; the drift loss stays fp32). Data: real digits (scikit-learn
`load_digits`, 1797 8×8 images, 10 classes), stacked into the preset's 4×8×8 latent shape as (x, its mirror, its
transpose, 1 − x), scaled to unit variance; the feature network is the preset's MAE (`small`) at its random
initialisation (frozen), so no VAE or MAE pre-training is needed. Prints:

- loss tracking: the loss smoothed by a centred moving average (`--window` steps) for both, and the largest relative
  gap |s_bf16 − s_fp32| / s_fp32 over the steps (the raw per-step gap too, which is mostly the two runs' noise);
- speed: the median step time of each and their ratio (fp32 / bf16), and the CPU's vector capabilities.

    .venv/bin/python bench/bf16_cpu.py                  # 200 steps each (~ 3-6 min on a shared 2-core machine)
    .venv/bin/python bench/bf16_cpu.py --steps 20       # a smoke run
"""
import argparse, json, os, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from drift_loss import cpu_info  # noqa: E402

from drifting.data import ImageDataset  # noqa: E402
from drifting.features import FeatureSpace  # noqa: E402
from drifting.mae import MAE, mae_config  # noqa: E402
from drifting.streams import DataStream  # noqa: E402
from drifting.train import Trainer, train_config  # noqa: E402


def digits_latents() -> ImageDataset:
    "Real digits in the cpu preset's 4×8×8 latent shape."
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32) / 16.0  # [1797, 8, 8] in [0, 1]
    x = torch.stack([x, x.flip(-1), x.transpose(-1, -2), 1 - x], 1)  # [1797, 4, 8, 8]
    x = (x - x.mean()) / x.std()
    return ImageDataset(x, torch.tensor(d.target), [str(i) for i in range(10)], "digits-4x8x8", "bench-digits-4x8x8",
                        kind="latents")


def trainer(ds, bf16: bool, steps: int) -> Trainer:
    cfg = train_config("cpu", steps=steps, bf16=bf16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same random encoder for both
        enc = MAE(mae_config(cfg.mae_preset, in_channels=4, num_classes=10)).encoder
    return Trainer(cfg, DataStream(ds, cfg.push_per_step, cfg.seed), FeatureSpace(enc, cfg.every_k_block), "cpu")


def smooth(v, w):
    "Centred moving average (shorter windows at the ends)."
    h = w // 2
    return [sum(v[max(0, i - h): i + h + 1]) / len(v[max(0, i - h): i + h + 1]) for i in range(len(v))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--window", type=int, default=21, help="moving-average window of the smoothed loss")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    print(cpu_info())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    ds = digits_latents()
    tr = {"fp32": trainer(ds, False, a.steps), "bf16": trainer(ds, True, a.steps)}
    assert (tr["fp32"].speed["bf16"], tr["bf16"].speed["bf16"]) == (False, True)
    loss = {k: [] for k in tr}
    sec = {k: [] for k in tr}
    for i in range(a.steps):
        for k in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")):
            t0 = time.perf_counter()
            m = tr[k].step()
            sec[k].append(time.perf_counter() - t0)
            loss[k].append(m["loss"])
        if (i + 1) % 10 == 0 or i + 1 == a.steps:  # the figures so far (a run cut short still leaves them)
            res = figures(loss, sec, a.window)
            print(f"step {i + 1}: loss fp32 {loss['fp32'][-1]:.4g} bf16 {loss['bf16'][-1]:.4g}; smoothed gap max "
                  f"{res['max_rel_gap_smoothed']:.2%}; speed fp32/bf16 {res['speed_ratio_fp32_over_bf16']:.2f}x",
                  file=sys.stderr, flush=True)
            if a.out:
                keep = {k: v for k, v in res.items() if not k.startswith("_")}
                Path(a.out).write_text(json.dumps(dict(keep, cpu=cpu_info(), threads=torch.get_num_threads()), indent=1))
    res = figures(loss, sec, a.window)
    s, med, gap, i = res.pop("_s"), res["median_step_s"], res.pop("_gap"), res["at_step"] - 1
    print(f"cpu preset, {a.steps} steps each (alternating), smoothed over {a.window} steps:")
    print(f"  loss at step 1: fp32 {loss['fp32'][0]:.5g}, bf16 {loss['bf16'][0]:.5g}; smoothed at the end: "
          f"fp32 {s['fp32'][-1]:.5g}, bf16 {s['bf16'][-1]:.5g}")
    print(f"  smoothed loss gap |bf16 - fp32| / fp32: max {max(gap):.2%} (step {i + 1}), mean {res['mean_rel_gap_smoothed']:.2%}; "
          f"raw per-step max {res['max_rel_gap_raw']:.2%}")
    print(f"  median step: fp32 {med['fp32'] * 1e3:.0f} ms, bf16 {med['bf16'] * 1e3:.0f} ms; "
          f"speed ratio fp32/bf16 {res['speed_ratio_fp32_over_bf16']:.2f}x")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


def figures(loss, sec, window) -> dict:
    "Loss tracking and speed from the per-step losses and times so far."
    s = {k: smooth(v, window) for k, v in loss.items()}
    gap = [abs(b - f) / abs(f) for f, b in zip(s["fp32"], s["bf16"])]
    raw = [abs(b - f) / abs(f) for f, b in zip(loss["fp32"], loss["bf16"])]
    med = {k: sorted(v[1:] or v)[len(v[1:] or v) // 2] for k, v in sec.items()}  # the first step apart (warm-up)
    i = max(range(len(gap)), key=gap.__getitem__)
    return dict(steps=len(gap), window=window, max_rel_gap_smoothed=max(gap), at_step=i + 1,
                mean_rel_gap_smoothed=sum(gap) / len(gap), max_rel_gap_raw=max(raw),
                first_loss={k: v[0] for k, v in loss.items()}, last_smoothed={k: v[-1] for k, v in s.items()},
                median_step_s=med, speed_ratio_fp32_over_bf16=med["fp32"] / med["bf16"], _s=s, _gap=gap)


if __name__ == "__main__":
    main()
