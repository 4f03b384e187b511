"""Peak RSS of streaming a pixel class folder of 10k vs 100k images (#24 item 3).

Writes synthetic class folders (100 classes of small noise images, PNG and JPEG, 40x36 pixels so the ADM centre crop
to 32x32 runs) into a temporary directory, then, in a fresh process per case, loads the folder lazily
(`load_dataset(..., lazy=True)`: `FolderRows`), streams one epoch of the training split through `DataStream` (a
DataLoader with worker processes decoding ahead, flips on) and reads the held-out split in batches as the FID
reference is read (`image_batches`). It prints the process's peak RSS (VmHWM), the largest worker's peak RSS (forked
from it, so its shared pages count too) and the wall time. The
eager loader (`lazy=False`, the whole folder decoded into memory) runs on the same folders for comparison.

Small images keep it quick; the decoded pixels of a folder grow with N x 3 x R^2 x 4 bytes (1.2 GB at 100k and
R = 32, ~79 GB for ImageNet val at 256), the lazy path's with the file list only.

    python bench/folder_rss.py                  # 10k and 100k, lazy and eager
    python bench/folder_rss.py --sizes 2000 20000 --no-eager
"""

import argparse, json, os, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np


def write_folder(root: Path, n: int, classes: int = 100, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
        d = root / f"c{i % classes:03d}"
        if i % 2:
            Image.fromarray(a).save(d / f"{i}.JPEG", quality=85)
        else:
            Image.fromarray(a).save(d / f"{i}.png", compress_level=1)


def vm_hwm_kib() -> int:
    """This process's peak RSS (KiB) since its exec: VmHWM. getrusage's ru_maxrss is not used for it, because Linux
    carries the parent's high-water mark into a child started by vfork+exec (Python's subprocess), so the child would
    report the bench parent's peak (measured: 646 MiB instead of 254 at 100k images)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(folder: str, lazy: bool, workers: int):
    import torch

    from drifting.data import load_dataset
    from drifting.folders import image_batches
    from drifting.streams import DataStream

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    train = load_dataset(folder, "train", 32, lazy=lazy, num_workers=workers)
    held = load_dataset(folder, "heldout", 32, lazy=lazy, num_workers=workers)
    t_load = time.perf_counter() - t0
    s = DataStream(train, 256, seed=0, flip=True, num_workers=workers if lazy else 0)
    total = 0.0
    for _ in range(s.per_epoch):  # one epoch of the training split
        x, y = s.next()
        total += float(x.double().sum())
    n_ref = 0
    for x in image_batches(held.images, 256):  # the reference set, batch by batch
        n_ref += len(x)
    self_kb, kids_kb = vm_hwm_kib(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps(dict(n_train=len(train), n_ref=n_ref, steps=s.per_epoch, load_s=round(t_load, 1),
                          wall_s=round(time.perf_counter() - t0, 1), peak_rss_mib=round(self_kb / 1024, 1),
                          workers_peak_rss_mib=round(kids_kb / 1024, 1), checksum=round(total, 3))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-eager", action="store_true", help="skip the eager (whole folder in memory) comparison")
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per case (the peak varies run to run)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], a.child[1] == "lazy", int(a.child[2]))
    tmp = Path(tempfile.mkdtemp(prefix="folder_rss_"))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    rows = []
    try:
        for n in a.sizes:
            t0 = time.perf_counter()
            write_folder(tmp / str(n), n)
            print(f"wrote {n} images (40x36 PNG/JPEG, 100 classes) in {time.perf_counter() - t0:.1f} s", flush=True)
            for mode in ["lazy"] + ([] if a.no_eager else ["eager"]):
                for _ in range(a.repeats):
                    cmd = [sys.executable, __file__, "--child", str(tmp / str(n)), mode, str(a.workers)]
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    if out.returncode:
                        sys.exit(out.stderr)
                    r = dict(n=n, mode=mode, **json.loads(out.stdout.strip().splitlines()[-1]))
                    rows.append(r)
                    print(json.dumps(r), flush=True)
            shutil.rmtree(tmp / str(n))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| images | mode | peak RSS (MiB) | workers' peak RSS (MiB) | wall (s) |\n|---|---|---|---|---|")
    for r in rows:
        w = r["workers_peak_rss_mib"] if r["mode"] == "lazy" else "—"
        print(f"| {r['n']} | {r['mode']} | {r['peak_rss_mib']} | {w} | {r['wall_s']} |")
    lazy = {}
    for r in rows:
        if r["mode"] == "lazy":
            lazy.setdefault(r["n"], []).append(r["peak_rss_mib"])
    if len(lazy) >= 2:
        lo, hi = min(lazy), max(lazy)
        a_hi, a_lo = min(lazy[hi]), min(lazy[lo])
        print(f"lazy peak RSS, lowest of {a.repeats} run(s): {a_hi} MiB at {hi} images, {a_lo} at {lo}: "
              f"{a_hi / a_lo:.2f}x")


if __name__ == "__main__":
    main()
