"""Benchmark of `drifting.drift_exact.drift_loss` (forward + backward) against the plain form of the release's loss,
`drifting.drift.release_drift_loss` (the equations as code, whole batch at once, fp32), measured in the same run.

Usage (the machine should be otherwise idle: a foreign busy core slows a 2-thread run several-fold):

    .venv/bin/python bench/drift_loss.py                 # all shapes (~2-3 minutes on an idle 2-core CPU)
    .venv/bin/python bench/drift_loss.py --quick         # groups / 8, 2 repetitions: a smoke run
    .venv/bin/python bench/drift_loss.py --shapes 0 1 --reps 3

Every (shape, implementation) runs in its own subprocess, so that the peak memory is that run's alone. Peak memory is
the process's resident-set high-water mark (VmHWM, which sees torch's allocations), reset after the inputs are created
(Linux `/proc/self/clear_refs`; elsewhere `ru_maxrss`, which then includes the imports), reported in total and as
"extra" = peak minus the RSS after the inputs were created. FLOPs counted per call:
G * (2 N_gen M D  [distances]  +  n_tau * 2 N_gen M D  [drift]),  M = N_gen + N_pos + N_unc; the backward adds no
matrix work. The roofline is the fp32 GEMM rate of this machine, measured in the same run (square `torch.mm`) before
the first shape and after each one; the best of these rates is used (this VM's speed drifts by up to 2x over minutes).

The compiled variant (`--compiled`, on by default; #27 item 5) is the plain form under `torch.compile` (inductor, the
same equations fused by the compiler), timed in the same rounds; its first call, the compile, is reported apart
("compile s"). Every table is headed by the CPU model and its vector capabilities (AVX2, AVX-512, AVX-512 BF16, AMX):
the ratios move with the processor.
"""
from __future__ import annotations

import argparse, json, os, resource, subprocess, sys, time

SHAPES = [  # (G, N_gen, N_pos, N_unc, D): S1 ... S5 of issue 15
    (1024, 64, 64, 16, 256),
    (64, 64, 64, 16, 4096),
    (4096, 64, 64, 16, 64),
    (1, 2048, 2048, 0, 2),
    (8, 512, 512, 128, 1024),
]
TARGETS = (4.5, 3.2, 6.8, 3.5, 2.0)  # issue 15: 1.5x the official JAX release, expressed against the plain form
TAUS = (0.02, 0.05, 0.2)
W_UNC = 3.0  # unconditional weight


VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info() -> str:
    "The CPU model and which of VECTOR_FLAGS it has (from /proc/cpuinfo; 'unknown' elsewhere)."
    import platform
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in open("/proc/cpuinfo"):
            k, _, v = line.partition(":")
            if k.strip() == "model name": model = v.strip()
            elif k.strip() == "flags": flags = set(v.split())
    except OSError:
        pass
    has = [f for f in VECTOR_FLAGS if f in flags]
    return f"CPU: {model}, {os.cpu_count()} cpus; vector: {' '.join(has) or 'none of ' + ' '.join(VECTOR_FLAGS)}"


def _reset_peak():
    "Reset the kernel's resident-set high-water mark (Linux: write 5 to /proc/self/clear_refs)."
    try:
        with open("/proc/self/clear_refs", "w") as f: f.write("5")
        return True
    except OSError:
        return False


def _peak_rss():
    "VmHWM of this process in bytes."
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"): return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def flops(G, N, Np, Nu, D, n_tau=len(TAUS)):
    M = N + Np + Nu
    return G * (1 + n_tau) * 2 * N * M * D


def worker(impl, shape, reps, threads, seed=0):
    "Time one implementation on one shape in this process; print a JSON line."
    import psutil, torch
    if threads > 0: torch.set_num_threads(threads)
    G, N, Np, Nu, D = shape
    g = torch.Generator().manual_seed(seed)
    gen = torch.randn(G, N, D, generator=g)
    pos = torch.randn(G, Np, D, generator=g) + 0.3
    neg = torch.randn(G, Nu, D, generator=g)
    w_neg = torch.full((G, 1), W_UNC)
    rss_inputs = psutil.Process().memory_info().rss
    hwm_reset = _reset_peak()  # so that the peak below is this computation's, not the imports'
    if impl.startswith("ours"):
        from drifting.drift_exact import drift_loss
        fn = lambda x: drift_loss(x, pos, neg, w_neg=w_neg[:, 0], low_memory=impl == "ours-lowmem")[0]
    else:
        from drifting.drift import release_drift_loss
        plain = torch.compile(release_drift_loss) if impl == "compiled" else release_drift_loss
        fn = lambda x: plain(x, pos, neg, w_neg=w_neg[:, 0])[0]
    times = []
    for r in range(reps + 1):  # the first call is a warm-up
        x = gen.clone().requires_grad_()
        t0 = time.perf_counter()
        fn(x).sum().backward()
        times.append(time.perf_counter() - t0)
    peak = _peak_rss() if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"impl": impl, "shape": shape, "ms": 1e3 * min(times[1:]), "first_s": times[0], "ms_median": 1e3 * sorted(times[1:])[reps // 2],
                      "peak_mb": peak / 2**20, "extra_mb": (peak - rss_inputs) / 2**20, "input_mb": (G * (N + Np + Nu) * D * 4) / 2**20}))


def check_same(grad=False, shape=(16, 32, 32, 8, 64)):
    "The two implementations compute the same loss and gradient."
    import torch
    from drifting.drift import release_drift_loss
    from drifting.drift_exact import drift_loss
    G, N, Np, Nu, D = shape
    g = torch.Generator().manual_seed(1)
    gen, pos, neg = torch.randn(G, N, D, generator=g), torch.randn(G, Np, D, generator=g) + .3, torch.randn(G, Nu, D, generator=g)
    w = torch.full((G, 1), W_UNC)
    x1, x2 = gen.clone().requires_grad_(), gen.clone().requires_grad_()
    l1, l2 = release_drift_loss(x1, pos, neg, w_neg=w[:, 0])[0], drift_loss(x2, pos, neg, w_neg=w[:, 0])[0]
    if not grad: return ((l1 - l2).abs().max() / l1.abs().max()).item()
    l1.sum().backward(); l2.sum().backward()
    return ((x1.grad - x2.grad).abs().max() / x1.grad.abs().max()).item()


def matmul_gflops(n=2048, reps=5):
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(f):
    t0 = time.perf_counter(); f(); return time.perf_counter() - t0


def _run_worker(impl, shape, reps, threads):
    out = subprocess.run([sys.executable, __file__, "--worker", impl, *map(str, shape), str(reps), str(threads)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(f"{impl} failed on {shape}:\n{out.stderr[-2000:]}"); return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", type=int, nargs="*", default=None, help="indices into SHAPES (default: all)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per worker process (after one warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="worker processes per implementation, alternated with the "
                    "reference's, so that a burst of foreign load hits both; the best time of all rounds is reported")
    ap.add_argument("--impl", default="ours", choices=["ours", "ours-lowmem"], help="ours-lowmem: drift_loss(..., low_memory=True)")
    ap.add_argument("--group-div", type=int, default=1, help="divide G by this (smaller, faster runs)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 is steadier on a busy machine")
    ap.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the plain form under torch.compile (--no-compiled: skip it)")
    ap.add_argument("--quick", action="store_true", help="shorthand for --group-div 8 --reps 2 --rounds 1")
    ap.add_argument("--worker", nargs=8, metavar=("IMPL", "G", "N", "NP", "NU", "D", "REPS", "THREADS"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        impl, *nums = a.worker
        nums = [int(v) for v in nums]
        return worker(impl, tuple(nums[:5]), nums[5], nums[6])
    if a.quick: a.group_div, a.reps, a.rounds = 8, 2, 1
    import torch
    if a.threads > 0: torch.set_num_threads(a.threads)
    load0 = os.getloadavg()
    print(cpu_info())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load average at start "
          f"{' '.join(f'{v:.1f}' for v in load0)} (should be ~0 for meaningful absolute numbers; ratios are same-run)")
    print(f"ours vs plain on a small problem (relative max difference): loss, gradient = {check_same():.1e}, {check_same(True):.1e}")
    roofs = [matmul_gflops()]  # measured again after every shape: the machine's speed drifts, the best rate is the roof
    rows = []
    for i in (a.shapes if a.shapes is not None else range(len(SHAPES))):
        G, N, Np, Nu, D = SHAPES[i]
        shape = (max(1, G // a.group_div), N, Np, Nu, D)
        runs = {"plain": [], a.impl: [], **({"compiled": []} if a.compiled else {})}
        for _ in range(a.rounds):
            for impl in runs:
                r = _run_worker(impl, shape, a.reps, a.threads)
                if r is not None: runs[impl].append(r)
        roofs.append(matmul_gflops())
        if not all(runs.values()): continue
        best = {k: min(v, key=lambda r: r["ms"]) for k, v in runs.items()}
        extra = {k: max(r["extra_mb"] for r in v) for k, v in runs.items()}
        comp = best.get("compiled")
        rows.append((i, shape, best["plain"]["ms"], best[a.impl]["ms"], extra,
                     (comp["ms"], max(r["first_s"] for r in runs["compiled"])) if comp else None))
        print(f"S{i + 1} done ({best['plain']['ms']:.1f} / {best[a.impl]['ms']:.1f} ms)", file=sys.stderr, flush=True)
    roof = max(roofs)
    print(f"fp32 matmul roofline (2048^3 torch.mm, best of 5, measured {len(roofs)} times: "
          f"{min(roofs):.1f}-{roof:.1f} GFLOP/s): {roof:.1f} GFLOP/s")
    cols = f" | {'compiled ms':>11} {'plain/comp':>10} {'compile s':>9}" if a.compiled else ""
    hdr = (f"{'':3} {'G, N_gen, N_pos, N_unc, D':>26} | {'plain ms':>9} {a.impl + ' ms':>9} | {'ratio':>6} {'target':>6} | "
           f"{'roof %':>6} | {'extra MB plain':>14} {'extra MB ours':>13}{cols}")
    print(cpu_info())
    print(hdr); print("-" * len(hdr))
    for i, shape, p, o, extra, comp in rows:
        roof_pct = 100 * flops(*shape) / (o / 1e3) / 1e9 / roof
        shp = ", ".join(map(str, shape))
        print(f"S{i + 1:<2} {shp:>26} | {p:9.1f} {o:9.1f} | {p / o:5.2f}x {TARGETS[i]:5.1f}x | {roof_pct:6.1f} | "
              f"{extra['plain']:14.0f} {extra[a.impl]:13.0f}"
              + (f" | {comp[0]:11.1f} {p / comp[0]:9.2f}x {comp[1]:9.1f}" if comp else (" | (failed)" if a.compiled else "")))
    print(f"load average at the end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
