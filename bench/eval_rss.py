"""Peak resident memory of the streamed evaluation (`drifting.stream.stream_sweep`) at 5k and 50k samples of one α
(issue 24 item 1), and the same figures estimated for ImageNet 256 at FID-50K.

    .venv/bin/python bench/eval_rss.py                        # 5k and 50k samples, ~5 minutes on a busy 2-core CPU
    .venv/bin/python bench/eval_rss.py --sizes 5000 20000     # shorter
    .venv/bin/python bench/eval_rss.py --in-memory            # also `sweep_alpha`, which holds every sample as floats

Each measurement runs in a fresh process: imports, then the setup `run_eval` makes on the built-in digits (the
MNIST-5k classifier as the metric network, its features of the 500 held-out images as the reference), then one α
of N samples from a tiny random generator of 1x8x8 latents with a stand-in decoder (bilinear x4 to 32x32, clipped):
generated, decoded, featurised, written as uint8 shards into a temporary folder, and measured (FID, KID, IS,
precision/recall, class accuracy and the held-out Frechet distance). The generator is random: the numbers are not
the point, the memory is. Printed: the peak RSS (VmHWM) after imports, after the setup and after the sweep, and the
ratio of the sweep's peak at the largest size to that at the smallest (the acceptance: at most 1.25).
The classifier comes from the cache ($DRIFTING_CACHE); the first run trains it (a few minutes).
"""
import argparse, json, subprocess, sys, tempfile

CHILD = r'''
import json, sys, tempfile, time
import torch
import torch.nn.functional as F
def peak():  # MiB; VmHWM, the peak RSS of this process image
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
from drifting.data import load_dataset
from drifting.evaluate import sweep_alpha
from drifting.generator import build_generator
from drifting.metrics import FeatureStats, extract_features
from drifting.metrics_nets import small_classifier
from drifting.stream import shard_writer, stream_sweep
n, mode = int(sys.argv[1]), sys.argv[2]
torch.set_num_threads(int(sys.argv[3]))
r = dict(n=n, mode=mode, imports=peak())
net = small_classifier()
train = load_dataset("mnist5k", split="train", resolution=32, heldout_frac=0.1, seed=0)
held = load_dataset("mnist5k", split="heldout", resolution=32, heldout_frac=0.1, seed=0)
ref_feats = extract_features(net, held.images)
kw = dict(classifier=net, train=train, heldout=held, progress=False, metric_net=net, ref_feats=ref_feats,
          ref_stats=FeatureStats.from_features(ref_feats, net))
gen = build_generator("tiny", in_channels=1, input_size=8, num_classes=10).eval()
decode = lambda z: F.interpolate(z, scale_factor=4, mode="bilinear").clamp(-1, 1)  # [c, 1, 32, 32]
r.update(setup=peak()); t0 = time.perf_counter()
with tempfile.TemporaryDirectory(prefix="eval-rss-") as d:
    if mode == "stream":
        rows, shards = stream_sweep(gen, [1.5], n // 10, shard_writer(d), decode=decode, **kw)
    else:
        rows, images, raw = sweep_alpha(gen, [1.5], n // 10, decode=decode, **kw)
r.update(sweep=peak(), sweep_s=time.perf_counter() - t0, fid=rows[0]["fid"], recall=rows[0]["recall"])
print(json.dumps(r))
'''


def imagenet_estimate(n=50_000, chunk=1024):
    "The dominant terms of one α at ImageNet 256 (latents 4x32x32, TF-Inception 2048-d pool3, 1008 logits), in GB."
    px, lat, d, k = 3 * 256 * 256, 4 * 32 * 32, 2048, 1008
    gb = lambda b: b / 1e9
    print(f"\nImageNet 256, FID-{n // 1000}K, one α (estimated from the shapes):")
    print(f"  in memory (sweep_alpha): samples {gb(n * px * 4):.1f} GB float32 + latents {gb(n * lat * 4):.2f} GB"
          f" + the noise drawn up front {gb(n * lat * 4):.2f} GB")
    print(f"  streamed (stream_sweep, chunks of {chunk}): one chunk of images {gb(chunk * px * 4):.2f} GB float32"
          f" + its uint8 shard {gb(chunk * px):.2f} GB + latents {gb(chunk * lat * 4):.3f} GB;"
          f" kept: features {gb(n * d * 4):.2f} GB + logits {gb(n * k * 4):.2f} GB;"
          f" float64 copies while measuring ~{gb(2 * n * d * 8):.2f} GB; a k-NN distance block 0.03 GB")
    print(f"  on disk per α: uint8 shards {gb(n * px):.1f} GB + latents {gb(n * lat * 4):.2f} GB;"
          f" the arr_0 export another {gb(n * px):.1f} GB")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[5_000, 50_000], help="samples of the α (10 classes)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--in-memory", action="store_true", help="also measure sweep_alpha (all samples held as floats)")
    a = p.parse_args()
    print("| samples | path | RSS imports MiB | RSS setup MiB | RSS sweep MiB | growth over setup MiB | sweep s |")
    print("|---|---|---|---|---|---|---|")
    peaks = {}
    for mode in ["stream"] + (["memory"] if a.in_memory else []):
        for n in a.sizes:
            out = subprocess.run([sys.executable, "-c", CHILD, str(n), mode, str(a.threads)], capture_output=True,
                                 text=True, cwd=tempfile.gettempdir())
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            peaks[mode, n] = r["sweep"]
            print(f"| {n} | {mode} | {r['imports']:.0f} | {r['setup']:.0f} | {r['sweep']:.0f} | "
                  f"{r['sweep'] - r['setup']:.0f} | {r['sweep_s']:.1f} |", flush=True)
    lo, hi = min(a.sizes), max(a.sizes)
    for mode in ["stream"] + (["memory"] if a.in_memory else []):
        ratio = peaks[mode, hi] / peaks[mode, lo]
        verdict = "" if mode != "stream" else (" (within 1.25)" if ratio <= 1.25 else " (OVER 1.25)")
        print(f"{mode}: peak RSS at {hi} / at {lo} = {ratio:.3f}{verdict}")
    imagenet_estimate()


if __name__ == "__main__":
    main()
