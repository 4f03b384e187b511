"""GPU readiness of the training step: run on a machine with CUDA.

1. a bf16 training step of the ablation preset (synthetic 4×32×32 latents, 1000 classes, a randomly initialised
   latent-MAE width-256 feature encoder: the shapes and costs of the paper's ablation run, not its data);
   step time, generated samples/s, peak GPU memory, FLOPs per step (torch's FLOP counter) and an MFU estimate
   against the card's dense bf16 peak (`--peak-tflops`, default by device name);
2. resume equality on CUDA with deterministic settings: k steps, checkpoint, k more, against a fresh trainer loaded
   from the checkpoint (bit-exact expected);
3. with two or more GPUs: a 2-process NCCL job in exact mode, whose first step must equal one process's (loss).

    python bench/gpu_check.py [--preset ablation] [--steps 5] [--peak-tflops 989]
    python bench/gpu_check.py --cpu --preset tiny     # the same checks on the CPU (tests the script; no MFU)

Not run on a GPU yet at the time of writing (no GPU in the development environment).
"""
import argparse, copy, os, sys, tempfile, time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (check 2)
import torch

from drifting.data import ImageDataset
from drifting.feature_nets import build_features
from drifting.mae import MAE, mae_config, save_encoder
from drifting.streams import data_stream
from drifting.train import Trainer, train_config

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


_ENCODERS = {}  # preset -> the random encoder's export folder


def build(preset, dev, n_items=4096, **overrides):  # overrides: other TrainConfig fields (bench/gpu_bench.py's switches)
    push = train_config(preset).push_per_step
    shape = (4, 32, 32) if preset != "tiny" else (2, 8, 8)
    classes = 1000 if preset != "tiny" else 5
    g = torch.Generator().manual_seed(0)
    ds = ImageDataset(torch.randn(max(n_items, push), *shape, generator=g),
                      torch.arange(max(n_items, push)) % classes, [str(i) for i in range(classes)],
                      "synthetic", f"gpu-check-{preset}")
    torch.manual_seed(0)
    enc = MAE(mae_config("latent-256" if preset != "tiny" else "tiny", in_channels=shape[0], num_classes=classes)).encoder
    # a random encoder as an export folder the config names (a distributed job rebuilds it from the config)
    if preset not in _ENCODERS:  # one folder per preset: a resumed trainer must name the same encoder
        _ENCODERS[preset] = str(save_encoder(enc, tempfile.mkdtemp()))
    cfg = train_config(preset, feature_encoder=_ENCODERS[preset], **overrides)
    return Trainer(cfg, data_stream(cfg, ds), build_features(cfg, ds, dev, progress=False)[0], dev)


def speed(a, dev):
    from torch.utils.flop_counter import FlopCounterMode
    t = build(a.preset, dev)
    t.step()  # warm-up (allocations, kernels)
    if dev.type == "cuda": torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter(); t.step()
        if dev.type == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    with FlopCounterMode(display=False) as fc: t.step()
    flops = fc.get_total_flops()
    s = sorted(times)[len(times) // 2]
    B = t.cfg.n_c * t.cfg.n_neg
    print(f"[1] {a.preset} on {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}: {s:.3f} s/step "
          f"(median of {a.steps}), {B / s:.0f} generated samples/s, {flops / 1e9:.1f} GFLOP/step")
    if dev.type == "cuda":
        print(f"    peak memory {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB")
        name = torch.cuda.get_device_name(dev)
        peak = a.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        if peak: print(f"    MFU ≈ {flops / s / 1e12 / peak:.1%} of {peak:.0f} dense bf16 TFLOP/s")
        else: print("    MFU: unknown card, pass --peak-tflops")


def resume_equality(a, dev):
    torch.use_deterministic_algorithms(True)
    try:
        t = build(a.preset, dev); t.fit(a.steps, progress=False); sd = copy.deepcopy(t.state_dict())
        t.fit(2 * a.steps, progress=False)
        u = build(a.preset, dev); u.load_state_dict(sd); u.fit(2 * a.steps, progress=False)
        same = all(torch.equal(x, y) for x, y in zip(t.gen.state_dict().values(), u.gen.state_dict().values()))
        print(f"[2] resume after {a.steps} steps, {a.steps} more, deterministic algorithms: weights "
              f"{'bit-identical' if same else 'DIFFER'}")
        return same
    finally:
        torch.use_deterministic_algorithms(False)


def two_gpus(a):
    from drifting.distributed import fit_worker, launch, save_job
    t = build(a.preset, torch.device("cuda", 0)); cfg = t.cfg
    with tempfile.TemporaryDirectory() as tmp:
        save_job(tmp, t)
        res = launch(fit_worker, 2, dict(build="drifting.distributed:build_trainer", kwargs=dict(folder=tmp), steps=1))
    one = t.step()["loss"]; two = res[0]["hist"]["loss"][0]
    ok = abs(two - one) <= 1e-4 * abs(one)  # bf16 autocast: looser than the fp32 CPU test's 1e-6
    print(f"[3] 2 GPUs (NCCL, exact): first-step loss {two:.6g} vs one GPU {one:.6g} ({'equal' if ok else 'DIFFERENT'} "
          f"to 1e-4); all-reduced per step: {res[0]['bytes']}")
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="ablation")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--cpu", action="store_true", help="run the checks on the CPU (to test this script)")
    a = ap.parse_args()
    if not a.cpu and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine (or --cpu --preset tiny to test the script)", file=sys.stderr); sys.exit(2)
    dev = torch.device("cpu") if a.cpu else torch.device("cuda", 0)
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, devices: {torch.cuda.device_count()}")
    speed(a, dev)
    ok = resume_equality(a, dev)
    if not a.cpu and torch.cuda.device_count() >= 2: ok &= two_gpus(a)
    elif not a.cpu: print("[3] skipped: fewer than 2 GPUs")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
