"""The prepared GPU script (#27 items 4, 5): one run, one table, one JSON file. Budget: ≤ 5 minutes on one H100.

Extends `bench/gpu_check.py` (whose trainers it builds: synthetic ImageNet-shaped latents, 1000 classes, a random
feature encoder of the preset's MAE exported to a folder the config names). Sections, each a group of table rows:

- step   for each preset (default: ablation and B/2): s/step (median), generated samples/s, peak device memory (the
         planner's prediction beside it), FLOPs per step (torch's FLOP counter: matrix products and convolutions of
         the forward and backward passes) and MFU against the card's dense bf16 peak; variants eager (the default
         path), fused (AdamW fused=True), compiled (torch.compile of generator and feature network, + fused), and
         on request (--variants) compiled+fused+TF32; the compile time is the first step's time minus the median step's. A variant that runs
         out of memory is a row saying so.
- drift  `drift_exact.drift_loss` forward + backward on the shapes S1-S5 of bench/drift_loss.py: kernel="eager" vs
         kernel="triton" (time, ratio, relative difference of loss and gradient, ok at ≤ 1e-5); where Triton or CUDA
         is missing, the eager timing alone and the reason.
- bf16   bf16 autocast vs fp32 (generator `use_bf16` off too) from the same seed: the first step's loss gap (same
         weights; ok when non-zero and below BF16_TOL, the test's bound, D-speed-2) and the largest smoothed gap.
- resume k steps, checkpoint, k more vs a fresh trainer loaded from the checkpoint, deterministic algorithms:
         ok when bit-identical.
- sync   with ≥ 2 GPUs: 2 NCCL ranks, today's flat all-reduce vs `grad_sync="overlap"` where TrainConfig has that
         field (another branch adds it); first-step loss equality (≤ 1e-6 relative) and s/step of each.

    python bench/gpu_bench.py --out gpu_bench.json              # on the GPU machine
    python bench/gpu_bench.py --cpu --preset tiny --quick --out x.json   # the same code on the CPU (pytest runs it)

The CPU model and vector flags, torch/CUDA versions and the device are printed and recorded with the table.
"""
import argparse, copy, dataclasses, json, math, os, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (resume)
import torch  # noqa: E402

from drift_loss import SHAPES, cpu_info  # noqa: E402
from gpu_check import PEAK_BF16_TFLOPS, build  # noqa: E402

from drifting.train import TrainConfig  # noqa: E402

BF16_TOL = 0.5  # first-step loss gap allowed to bf16 (tests/test_speed_switches.py, D-speed-2)
VARIANTS = {  # name -> TrainConfig switches
    "eager": {},
    "fused": dict(fused_adamw=True),
    "compiled": dict(compile=True, fused_adamw=True),
    "compiled+tf32": dict(compile=True, fused_adamw=True, tf32=True),
}


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev):
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM
    except OSError:
        pass


def peak_gib(dev):
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 2**30  # the process's resident peak (CPU: everything)
    except OSError:
        return None


def peak_tflops(a, dev):
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return a.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def planned_gib(preset, dev, bf16):
    try:
        from drifting.planner import plan
        shape = dict(num_classes=5, item_shape=(2, 8, 8)) if preset == "tiny" else {}
        return plan(preset, precision="bf16" if bf16 else "fp32", device=dev.type, **shape)["peak_gib"]
    except Exception as e:  # the planner is a prediction beside the measurement, not a check
        return f"planner failed: {type(e).__name__}: {e}"[:120]


def step_rows(a, dev, preset):
    from torch.utils.flop_counter import FlopCounterMode
    rows, flops = [], None
    for name in a.variants:
        row = dict(section="step", name=f"{preset} {name}")
        t = None
        try:
            t = build(preset, dev, **VARIANTS[name])
            sync(dev)
            t0 = time.perf_counter()
            t.step()  # warm-up: allocations, kernels, and the compile
            sync(dev)
            first = time.perf_counter() - t0
            reset_peak(dev)
            times = []
            for _ in range(a.steps):
                t0 = time.perf_counter()
                t.step()
                sync(dev)
                times.append(time.perf_counter() - t0)
            s = sorted(times)[len(times) // 2]
            row.update(s_per_step=s, samples_per_s=t.cfg.n_c * t.cfg.n_neg / s, peak_gib=peak_gib(dev),
                       speed=t.speed, compile_s=first - s if t.cfg.compile else None)
            if flops is None:  # the matrix FLOPs do not depend on the variant: counted once, on an eager step
                with FlopCounterMode(display=False) as fc:
                    build(preset, dev).step() if t.cfg.compile else t.step()
                flops = fc.get_total_flops()
            row["gflop_per_step"] = flops / 1e9
            pk = peak_tflops(a, dev)
            row["mfu"] = flops / s / 1e12 / pk if pk else None
            if name == "eager" and not a.quick:  # the planner's fake-tensor run: ~40 s on a busy 2-core CPU
                row["planned_gib"] = planned_gib(preset, dev, t.speed["bf16"])
        except torch.cuda.OutOfMemoryError as e:
            row.update(error=f"out of memory: {str(e)[:100]}")
        except Exception as e:  # one failing variant must not cost the rest of the GPU time
            row.update(error=f"{type(e).__name__}: {str(e)[:200]}", ok=False)
        finally:
            del t
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            torch._dynamo.reset()
        rows.append(row)
    return rows


def drift_rows(a, dev):
    from drifting.drift_exact import drift_loss
    from drifting.drift_triton import triton_unavailable
    rows = []
    for i in a.shapes:
        G, N, Np, Nu, D = SHAPES[i]
        G, N, Np, Nu = max(1, G // a.drift_div), min(N, a.drift_cap), min(Np, a.drift_cap), min(Nu, a.drift_cap)
        g = torch.Generator().manual_seed(i)
        gen, pos = torch.randn(G, N, D, generator=g).to(dev), (torch.randn(G, Np, D, generator=g) + 0.3).to(dev)
        neg = torch.randn(G, Nu, D, generator=g).to(dev) if Nu else None
        w = torch.full((G,), 3.0, device=dev) if Nu else None
        row = dict(section="drift", name=f"S{i + 1} {G},{N},{Np},{Nu},{D}")
        why = triton_unavailable(gen)

        def run(kernel):
            best, out = math.inf, None
            for _ in range(a.drift_reps + 1):
                x = gen.clone().requires_grad_()
                sync(dev)
                t0 = time.perf_counter()
                loss = drift_loss(x, pos, neg, w_neg=w, kernel=kernel)[0].sum()
                loss.backward()
                sync(dev)
                best, out = min(best, time.perf_counter() - t0), (loss.detach(), x.grad)
            return best, out

        try:
            te, (le, ge) = run("eager")
            row["eager_ms"] = 1e3 * te
            if why is None:
                tt, (lt, gt) = run("triton")
                dl = ((lt - le).abs() / le.abs()).item()
                dg = ((gt - ge).norm() / ge.norm()).item()
                row.update(triton_ms=1e3 * tt, eager_over_triton=te / tt, loss_rel=dl, grad_rel=dg, ok=dl <= 1e-5 and dg <= 1e-5)
            else:
                row["note"] = f"triton: {why}"
        except torch.cuda.OutOfMemoryError as e:
            row.update(error=f"out of memory: {str(e)[:100]}")
        rows.append(row)
    return rows


def bf16_row(a, dev):
    n = max(2, a.bf16_steps)
    hist = {}
    for k, over in (("fp32", dict(bf16=False, generator_overrides=dict(use_bf16=False))), ("bf16", dict(bf16=True))):
        t = build(a.preset[0], dev, **over)
        hist[k] = [t.step()["loss"] for _ in range(n)]
        del t
    w = max(1, n // 5)
    sm = {k: [sum(v[max(0, i - w):i + 1]) / len(v[max(0, i - w):i + 1]) for i in range(n)] for k, v in hist.items()}
    first = abs(hist["bf16"][0] - hist["fp32"][0]) / abs(hist["fp32"][0])
    gap = max(abs(b - f) / abs(f) for f, b in zip(sm["fp32"], sm["bf16"]))
    return [dict(section="bf16", name=f"{a.preset[0]} {n} steps", first_step_rel=first, max_smoothed_rel=gap,
                 loss_fp32=hist["fp32"][-1], loss_bf16=hist["bf16"][-1], ok=0 < first < BF16_TOL)]


def resume_row(a, dev):
    k = max(1, a.steps // 2)
    torch.use_deterministic_algorithms(True)
    try:
        t = build(a.preset[0], dev)
        t.fit(k, progress=False)
        sd = copy.deepcopy(t.state_dict())
        t.fit(2 * k, progress=False)
        u = build(a.preset[0], dev)
        u.load_state_dict(sd)
        u.fit(2 * k, progress=False)
        same = all(torch.equal(x, y) for x, y in zip(t.gen.state_dict().values(), u.gen.state_dict().values()))
    finally:
        torch.use_deterministic_algorithms(False)
    return [dict(section="resume", name=f"{a.preset[0]} {k}+{k} steps", bit_identical=same, ok=same)]


def sync_rows(a):
    from drifting.distributed import fit_worker, launch, save_job
    if torch.cuda.device_count() < 2:
        return [dict(section="sync", name="2 GPUs", note=f"skipped: {torch.cuda.device_count()} GPU(s)")]
    modes = ["flat"] + (["overlap"] if "grad_sync" in {f.name for f in dataclasses.fields(TrainConfig)} else [])
    rows, loss = [], {}
    for mode in modes:
        t = build(a.preset[0], torch.device("cuda", 0), **({} if mode == "flat" else dict(grad_sync="overlap")))
        with tempfile.TemporaryDirectory() as tmp:
            save_job(tmp, t)
            res = launch(fit_worker, 2, dict(build="drifting.distributed:build_trainer", kwargs=dict(folder=tmp),
                                             steps=a.steps + 1))
        h = res[0]["hist"]
        loss[mode] = h["loss"][0]
        s = sorted(h["seconds"][1:])[len(h["seconds"][1:]) // 2]
        rows.append(dict(section="sync", name=f"{a.preset[0]} 2 GPUs {mode}", s_per_step=s, first_loss=h["loss"][0],
                         bytes=res[0]["bytes"], comm_seconds=res[0]["comm_seconds"]))
    if "overlap" in loss:
        rel = abs(loss["overlap"] - loss["flat"]) / abs(loss["flat"])
        rows[-1].update(rel_vs_flat=rel, ok=rel <= 1e-6)
    else:
        rows.append(dict(section="sync", name="overlap", note="skipped: TrainConfig has no grad_sync field here"))
    return rows


def fmt(row):
    skip = ("section", "name", "ok", "speed")
    parts = []
    for k, v in row.items():
        if k in skip or v is None:
            continue
        if isinstance(v, float):
            v = f"{v:.3g}" if k != "mfu" else f"{v:.1%}"
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", nargs="+", default=["ablation", "B/2"], help="TRAIN_PRESETS names for the step section")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant (after one warm-up)")
    ap.add_argument("--variants", nargs="+", default=["eager", "fused", "compiled"], choices=list(VARIANTS),
                    help="step variants (compiled+tf32 too, if the budget allows: each compile costs a minute or two)")
    ap.add_argument("--shapes", type=int, nargs="+", default=list(range(len(SHAPES))), help="drift shapes (0-4)")
    ap.add_argument("--drift-div", type=int, default=1, help="divide the drift shapes' G by this")
    ap.add_argument("--drift-cap", type=int, default=1 << 30, help="cap N_gen, N_pos, N_unc of the drift shapes")
    ap.add_argument("--drift-reps", type=int, default=3)
    ap.add_argument("--bf16-steps", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak (default by name)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (to test the script; no MFU)")
    ap.add_argument("--quick", action="store_true", help="small: no compiled variants, no planner, drift G/64 and N ≤ 128, 3 steps")
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    a = ap.parse_args(argv)
    if not a.cpu and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine (or --cpu --preset tiny --quick to test the script)", file=sys.stderr)
        sys.exit(2)
    if a.quick:
        a.variants = [v for v in a.variants if "compiled" not in v]
        a.drift_div, a.drift_cap, a.drift_reps, a.bf16_steps, a.steps = 64, 128, 1, 4, min(a.steps, 3)
    dev = torch.device("cpu") if a.cpu else torch.device("cuda", 0)
    head = dict(torch=torch.__version__, cuda=torch.version.cuda, cpu=cpu_info(),
                device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
                gpus=torch.cuda.device_count(), args=vars(a))
    print(f"{head['cpu']}\ntorch {head['torch']}, CUDA {head['cuda']}, device {head['device']}, GPUs {head['gpus']}")
    rows, t_all = [], time.perf_counter()
    sections = [("step", lambda: [r for p in a.preset for r in step_rows(a, dev, p)]), ("drift", lambda: drift_rows(a, dev)),
                ("bf16", lambda: bf16_row(a, dev)), ("resume", lambda: resume_row(a, dev))]
    if not a.cpu:
        sections.append(("sync", lambda: sync_rows(a)))
    for name, fn in sections:
        t0 = time.perf_counter()
        try:
            new = fn()
        except Exception as e:  # a broken section is a row, and the others still run
            new = [dict(section=name, name="(section)", error=f"{type(e).__name__}: {str(e)[:300]}", ok=False)]
        for r in new:
            r.setdefault("section", name)
        rows += new
        print(f"[{name}] {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    w = max(len(r["name"]) for r in rows)
    print(f"{'section':7} | {'name':{w}} | ok    | figures")
    for r in rows:
        ok = "" if "ok" not in r else ("yes" if r["ok"] else "NO")
        print(f"{r['section']:7} | {r['name']:{w}} | {ok:5} | {fmt(r)}")
    print(f"total {time.perf_counter() - t_all:.0f} s")
    if a.out:
        Path(a.out).write_text(json.dumps(dict(head, rows=rows, seconds=time.perf_counter() - t_all), indent=1, default=str))
    sys.exit(0 if all(r.get("ok", True) for r in rows) else 1)


if __name__ == "__main__":
    main()
