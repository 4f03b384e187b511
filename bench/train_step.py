"""Speed of one training step of a preset (default `cpu`: the default `run_latent` job) and where its time goes.

Prints seconds per step, generated samples per second, a breakdown by phase, each phase's matrix FLOPs against the
fp32 GEMM rate measured in the same run (the time the phase would take if it ran at that rate: a floor for fp32),
and, as references measured in the same run, the drift loss with one call per feature key (`merge=False`) against
the default (keys of one shape in one call), and the patch statistics by average pooling (what
`drifting.features.patch_stats` does) against the reshape + `var` form it replaced. Run on an idle machine:

    .venv/bin/python bench/train_step.py [--threads 2] [--steps 10]
    .venv/bin/python bench/train_step.py --preset ablation --n-c 1 --n-neg 8 --n-pos 16 --n-unc 4 --steps 2  # Tab. 8's ablation model, small batch
"""
import argparse, functools, time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from drifting.data import ImageDataset
from drifting.features import feature_drift_loss, group_by_class, patch_stats
from drifting.mae import MAE, mae_config
from drifting.features import FeatureSpace
from drifting.generator import generator_config
import drifting.train as train_mod
from drifting.train import DataStream, Trainer, train_config


def reshape_var_stats(f, p):  # the previous implementation, kept here as the reference
    B, C, H, W = f.shape
    v = f.reshape(B, C, H // p, p, W // p, p).permute(0, 1, 2, 4, 3, 5).reshape(B, C, (H // p) * (W // p), p * p)
    return v.mean(-1).transpose(1, 2), (v.var(-1, unbiased=False) + 1e-6).sqrt().transpose(1, 2)


def timed(fn, n):
    fn(); t = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - t) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--preset", default="cpu", help="a TRAIN_PRESETS name")
    ap.add_argument("--n-c", type=int, default=None, help="class labels per step (a small batch for the big presets)")
    ap.add_argument("--n-neg", type=int, default=None, help="generated samples per label")
    ap.add_argument("--n-pos", type=int, default=None, help="positives per label")
    ap.add_argument("--n-unc", type=int, default=None, help="unconditional negatives per label")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    base = train_config(a.preset)
    small = {k: v for k, v in dict(n_c=a.n_c, n_neg=a.n_neg, n_pos=a.n_pos, n_unc=a.n_unc).items() if v is not None}
    cfg = train_config(a.preset, **small)
    gcfg = generator_config(cfg.generator, **cfg.generator_overrides)
    shape = (gcfg.in_channels, gcfg.input_size, gcfg.input_size)  # the preset's data: latents or pixels
    K = 10 if a.preset in ("cpu", "cpu-pixel") else max(cfg.n_c, 10)
    n_data = max(4500 if K == 10 else 40 * K, cfg.push_per_step)
    ds = ImageDataset(torch.randn(n_data, *shape, generator=g), torch.arange(n_data) % K, [str(i) for i in range(K)], "rand", "fp")
    cfg = train_config(cfg, queue_per_class=min(base.queue_per_class, n_data // K))
    enc = MAE(mae_config(cfg.mae_preset, in_channels=shape[0], num_classes=K)).encoder
    fs = FeatureSpace(enc, cfg.every_k_block)
    tr = Trainer(cfg, DataStream(ds, cfg.push_per_step), fs, "cpu")
    n_params = sum(p.numel() for p in tr.gen.parameters())
    warm = 1 if a.preset not in ("cpu", "cpu-pixel") else 3
    for _ in range(warm): tr.step()
    default_loss = train_mod.feature_drift_loss
    per_key_loss = functools.partial(default_loss, merge=False)
    dt, dt_ref = 0.0, 0.0  # the default step and the reference step (one drift_loss call per key), alternating
    for i in range(a.steps):
        for ref in ((False, True) if i % 2 == 0 else (True, False)):
            train_mod.feature_drift_loss = per_key_loss if ref else default_loss
            t = time.perf_counter(); tr.step(); d = (time.perf_counter() - t) / a.steps
            if ref: dt_ref += d
            else: dt += d
    train_mod.feature_drift_loss = default_loss
    B = cfg.n_c * cfg.n_neg
    print(f"{a.preset} preset (generator {cfg.generator} {n_params / 1e6:.1f}M, MAE {cfg.mae_preset}, N_c {cfg.n_c} x "
          f"N_neg {cfg.n_neg} / N_pos {cfg.n_pos} / N_unc {cfg.n_unc}, data {list(shape)}), {a.threads} threads: "
          f"{dt:.3f} s/step, {B / dt:.1f} generated samples/s" + (f"; {cfg.steps} steps = {cfg.steps * dt / 60:.1f} min" if a.preset == "cpu" else ""))
    print(f"reference step, one drift_loss call per feature key (merge=False), alternating with the default: {dt_ref:.3f} s/step; "
          f"speed-up {dt_ref / dt:.2f}x")

    # phases of one step (same shapes as the trainer)
    n, gen = cfg.n_c, tr.gen
    lab = torch.arange(n).repeat_interleave(cfg.n_neg); eps = torch.randn(B, *shape, generator=g)
    pos, unc = torch.randn(n * cfg.n_pos, *shape, generator=g), torch.randn(n * cfg.n_unc, *shape, generator=g)
    w = torch.rand(n, generator=g)
    T = dict(gen_fwd=0.0, features_gen=0.0, features_real=0.0, drift_fwd=0.0, backward=0.0)
    drift_ab = dict(per_key=0.0, merged=0.0)  # the drift forward both ways, on the same leaves, alternating
    for i in range(a.steps + warm):
        t0 = time.perf_counter(); x = gen(eps, lab, 1.5); t1 = time.perf_counter()
        fg = group_by_class(fs(x), n); t2 = time.perf_counter()
        with torch.no_grad(): fp, fu = group_by_class(fs(pos), n), group_by_class(fs(unc), n)
        t3 = time.perf_counter(); loss = feature_drift_loss(fg, fp, fu, w=w)[0]; t4 = time.perf_counter()
        loss.backward(); t5 = time.perf_counter()
        leaves = {k: v.detach().requires_grad_() for k, v in fg.items()}  # with autograd, as in the step
        for form in (("per_key", "merged") if i % 2 == 0 else ("merged", "per_key")):
            t6 = time.perf_counter(); feature_drift_loss(leaves, fp, fu, w=w, merge=form == "merged")
            if i >= warm: drift_ab[form] += (time.perf_counter() - t6) / a.steps
        if i >= warm:
            for k, d in zip(T, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)): T[k] += d / a.steps
    tot = sum(T.values())
    print("phase breakdown: " + ", ".join(f"{k} {v:.3f}s ({v / tot:.0%})" for k, v in T.items()) + f"; {len(fg)} feature keys "
          f"in {len({(t.shape[1], t.shape[3]) for t in fg.values()})} drift_loss calls (one per feature width)")
    print(f"drift fwd on the same features, alternating: one call per key (merge=False, reference) {drift_ab['per_key']:.3f}s, "
          f"keys of one shape in one call (default) {drift_ab['merged']:.3f}s, speed-up {drift_ab['per_key'] / drift_ab['merged']:.2f}x")

    # matrix FLOPs of each phase against the fp32 GEMM rate of this run: the time of each phase at that rate
    fl = {}
    with FlopCounterMode(display=False) as m: x = gen(eps, lab, 1.5)
    fl["gen_fwd"] = m.get_total_flops()
    with FlopCounterMode(display=False) as m: fg = group_by_class(fs(x), n)
    fl["features_gen"] = m.get_total_flops()
    with FlopCounterMode(display=False) as m, torch.no_grad(): fp, fu = group_by_class(fs(pos), n), group_by_class(fs(unc), n)
    fl["features_real"] = m.get_total_flops()
    with FlopCounterMode(display=False) as m: loss = feature_drift_loss(fg, fp, fu, w=w)[0]
    fl["drift_fwd"] = m.get_total_flops()
    with FlopCounterMode(display=False) as m: loss.backward()
    fl["backward"] = m.get_total_flops()
    A, Bm = torch.randn(2048, 2048, generator=g), torch.randn(2048, 2048, generator=g)
    rate = 2 * 2048 ** 3 / min(timed(lambda: A @ Bm, 1) for _ in range(5))  # best of 5, as bench/drift_loss.py
    floor = sum(fl.values()) / rate
    print(f"fp32 GEMM rate (2048^3 mm) {rate / 1e9:.0f} GFLOP/s; matrix work per phase: " + ", ".join(
        f"{k} {v / 1e9:.2f} GFLOP = {1e3 * v / rate:.0f} ms ({v / rate / T[k]:.0%} of its time)" for k, v in fl.items()))
    print(f"all phases at the GEMM rate: {floor:.3f} s = {floor / dt:.0%} of the measured step "
          f"(a 2x faster step, {dt / 2:.3f} s, needs {2 * floor / dt:.0%} of the GEMM rate over the whole step)")

    # reference in the same run: patch statistics, pooled (ours) vs reshape + var (previous)
    for shape, p in (((B, 32, 8, 8), 2), ((B, 32, 8, 8), 4), ((B, 64, 4, 4), 2)):
        f = torch.randn(*shape, generator=g).requires_grad_()
        def run(fn):
            m, s = fn(f, p); (m.sum() + s.sum()).backward()
        ours, ref = timed(lambda: run(patch_stats), 5), timed(lambda: run(reshape_var_stats), 5)
        err = max((x - y).abs().max().item() for x, y in zip(patch_stats(f, p), reshape_var_stats(f, p)))
        print(f"patch stats {list(shape)} p={p}: pooled {ours * 1e3:.1f} ms, reshape+var {ref * 1e3:.1f} ms, "
              f"speed-up {ref / ours:.2f}x, max difference {err:.1e}")


if __name__ == "__main__":
    main()
