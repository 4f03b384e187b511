"""Peak resident memory of opening and streaming a sharded latent cache, for caches of different sizes (issue 11 item 5).

    .venv/bin/python bench/cache_rss.py                          # 10k and 200k items of 4x8x8 fp32 (+ flips), ~0.5 GB of disk
    .venv/bin/python bench/cache_rss.py --sizes 10000 1281167 --shape 4 32 32 --dtype float16   # ImageNet-sized (21 GB)

Each cache is written once (synthetic latents, shards of `--shard` items) into `--dir`, then each measurement runs in
a fresh process: import, `load_dataset(cache, lazy=True)` (every shard hashed), then one epoch of random batches of
`--batch` items with their flips, as `drifting.train.DataStream` draws them. Printed: items, bytes on disk, the peak
RSS (VmHWM) after imports, after opening, after streaming, and the growth over the imports; for contrast the same
for loading the cache whole (`load_dataset(cache)`), which grows with the cache.
"""
import argparse, json, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

CHILD = r'''
import json, sys, time
import torch
def peak():  # MiB; VmHWM, the peak RSS of this process image (ru_maxrss would carry the parent's peak across exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
from drifting.data import load_dataset
from drifting.train import DataStream
path, lazy, batch = sys.argv[1], sys.argv[2] == "lazy", int(sys.argv[3])
r = dict(imports=peak()); t0 = time.perf_counter()
ds = load_dataset(path, split="all", lazy=lazy)
r.update(open=peak(), open_s=time.perf_counter() - t0); t0 = time.perf_counter()
s = DataStream(ds, batch, seed=0, flip=True)
acc = 0.0
for _ in range(s.per_epoch): acc += float(s.next()[0].sum())
r.update(stream=peak(), stream_s=time.perf_counter() - t0, items=len(ds))
print(json.dumps(r))
'''

def write_cache(root: Path, n: int, shape: tuple, dtype: str, shard: int):
    from drifting.latent_cache import LatentCacheWriter
    w = LatentCacheWriter(root, dict(source_fingerprint=f"synthetic-{n}", encoder="synthetic", scaling_factor=1.0))
    g = np.random.default_rng(0)
    for k, s in enumerate(range(0, n, shard)):
        m = min(shard, n - s)
        lat = g.standard_normal((m, *shape), dtype=np.float32).astype(dtype)
        w.write(k, s, lat, np.arange(s, s + m) % 1000, lat[..., ::-1])
    w.finish(-(-n // shard))

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000])
    p.add_argument("--shape", type=int, nargs=3, default=[4, 8, 8])
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--shard", type=int, default=10_000, help="items per shard")
    p.add_argument("--batch", type=int, default=256, help="items per streamed batch")
    p.add_argument("--dir", default=None, help="where the caches are written (default: a temporary folder, removed)")
    p.add_argument("--eager", action="store_true", help="also measure loading each cache whole")
    a = p.parse_args()
    base = Path(a.dir or tempfile.mkdtemp(prefix="cache-rss-"))
    try:
        print(f"shape {tuple(a.shape)} {a.dtype} + flips, shards of {a.shard}, batches of {a.batch}")
        print("| items | bytes on disk | mode | RSS imports MiB | RSS open MiB | RSS stream MiB | growth MiB | open s | stream s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for n in a.sizes:
            root = base / f"c{n}"
            if not (root / "manifest.json").exists(): write_cache(root, n, tuple(a.shape), a.dtype, a.shard)
            size = sum(f.stat().st_size for f in root.iterdir())
            for mode in ["lazy"] + (["eager"] if a.eager else []):
                out = subprocess.run([sys.executable, "-c", CHILD, str(root), mode, str(a.batch)], capture_output=True,
                                     text=True, check=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                print(f"| {n} | {size / 1e6:.1f} MB | {mode} | {r['imports']:.0f} | {r['open']:.0f} | {r['stream']:.0f} | "
                      f"{r['stream'] - r['imports']:.0f} | {r['open_s']:.1f} | {r['stream_s']:.1f} |", flush=True)
        n_in, item = 1_281_167, 4 * 32 * 32
        print(f"ImageNet 256 latents: {n_in} items x 2 (flips) x 4x32x32 = {n_in * 2 * item * 4 / 1e9:.2f} GB fp32, "
              f"{n_in * 2 * item * 2 / 1e9:.2f} GB fp16 (+ {n_in * 8 / 1e6:.1f} MB labels)")
    finally:
        if a.dir is None: shutil.rmtree(base, ignore_errors=True)

if __name__ == "__main__": main()
