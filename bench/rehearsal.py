"""Rehearse the paper's ImageNet job at its counts on a CPU, with tiny networks (issue #24 item 9).

The README's ImageNet recipe, stage by stage, each stage a separate process as on a cluster:

1. a synthetic ImageNet-shaped class folder (1000 classes of small PNGs) and a tiny random `AutoencoderKL`;
2. the streamed latent export, SIGKILLed after its first shards, then resumed to the end;
3. MAE pre-training (`nbs/run_mae.ipynb`), SIGKILLed after its first checkpoint, then resumed from its bundle;
4. training (`nbs/run_latent.ipynb -p nproc 2`, preset `tiny`) on the latent cache with that encoder;
5. evaluation (`nbs/run_eval.ipynb`) of 50 samples per class over the last K checkpoints, against reference
   statistics imported from a file in ADM's layout (`mu`, `sigma`), as one would import the release's.

FID at these counts with TF-Inception would take hours on a CPU (about 7 images/s), so the evaluation uses
`metric_net rehearsal`: seeded random convolutional features. Its numbers exercise the whole path (chunks, shards,
statistics, files) and say nothing about quality. Prints wall time and peak RSS (the process tree's, sampled) per
stage and writes them as JSON.

    python bench/rehearsal.py                 # 1000 classes x 10 images, 50 samples per class of α 1.5, last 2 checkpoints
    python bench/rehearsal.py --small         # 12 classes: the CI version (tests/test_rehearsal.py)
"""

from __future__ import annotations

import argparse, json, os, signal, subprocess, sys, time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def tree_rss(pid: int) -> int:
    "Resident bytes of a process and all its descendants (from /proc)."
    kids, rss = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            rss[int(d.name)] = int((d / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            kids.setdefault(ppid, []).append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += kids.get(p, [])
    return total


def stage(rows: list, name: str, argv: list, kill_when=None, env=None, log: Path | None = None) -> int:
    "Run one stage as a process group; SIGKILL it when `kill_when()` turns true; record wall time and peak RSS."
    t0, peak = time.perf_counter(), 0
    out = open(log, "w") if log else subprocess.DEVNULL
    p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    killed = False
    while p.poll() is None:
        peak = max(peak, tree_rss(p.pid))
        if kill_when is not None and not killed and kill_when():
            os.killpg(p.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.2)
    rc = p.wait()
    rows.append(dict(stage=name, wall_s=round(time.perf_counter() - t0, 1), peak_rss_mib=round(peak / 2**20), rc=rc))
    print(f"{name:<28} {rows[-1]['wall_s']:>8.1f} s {rows[-1]['peak_rss_mib']:>7} MiB  rc={rc}", flush=True)
    if kill_when is not None and not killed:
        raise SystemExit(f"stage {name!r} ended (rc={rc}) before it could be killed: make it longer; see {log}")
    if (rc != 0) != killed:
        raise SystemExit(f"stage {name!r} ended with rc={rc} (killed: {killed}); see {log}")
    return rc


def make_data(folder: Path, vae_dir: Path, classes: int, per_class: int, size: int):
    "Class folders of small PNGs (a per-class colour and stripe pattern plus noise) and a tiny random VAE."
    from PIL import Image
    import torch
    from diffusers import AutoencoderKL

    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for c in range(classes):
        d = folder / f"n{c:08d}"  # ImageNet's synset-like names
        d.mkdir(parents=True, exist_ok=True)
        base = g.uniform(0, 255, 3)
        freq, phase = 1 + c % 7, (c // 7) % 5
        for i in range(per_class):
            stripes = 60 * np.sin(2 * np.pi * (freq * xx / size + phase / 5))[..., None]
            img = np.clip(base + stripes + g.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i:04d}.png")
    torch.manual_seed(0)
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=size,
        scaling_factor=0.5,
    ).save_pretrained(vae_dir)


def ref_stats_file(folder: Path, size: int, out: Path):
    "The reference set's statistics in the rehearsal network's features, written in ADM's layout (mu, sigma)."
    from drifting.data import load_image_folder
    from drifting.metrics import FeatureStats, extract_features
    from drifting.metrics_nets import rehearsal_features

    net = rehearsal_features()
    ds = load_image_folder(folder, size)
    st = FeatureStats.from_features(extract_features(net, ds.images), net)
    np.savez(out, mu=st.mu, sigma=st.sigma)


def newest(pattern: str, root: Path) -> Path | None:
    hits = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    return hits[-1] if hits else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="12 classes, short stages: the CI version")
    ap.add_argument("--work", default=None, help="working folder (default: a new one under /tmp)")
    ap.add_argument("--json", default=None, help="write the stage table here")
    a = ap.parse_args(argv)
    n_cls, per_cls, size = (12, 10, 32) if a.small else (1000, 10, 32)
    mae_steps, steps, n_eval, last_k = (40, 8, 5, 2) if a.small else (200, 60, 50, 2)
    alphas = "1.0,2.0" if a.small else "1.5"  # full: 50k samples per α and checkpoint, so one α (~10 min on 2 cores)
    work = Path(a.work or f"/tmp/drifting-rehearsal-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    folder, vae, cache, runs = work / "train", work / "vae", work / "latents", work / "runs"
    env = dict(os.environ, DRIFTING_RUNS_DIR=str(runs), PYTHONPATH=str(ROOT))
    py, drifting = sys.executable, [sys.executable, "-c", "import sys; from drifting.cli import main; sys.exit(main())"]
    rows, t0 = [], time.perf_counter()
    print(f"rehearsal: {n_cls} classes x {per_cls} images of {size}^2 in {work}", flush=True)

    t = time.perf_counter()
    make_data(folder, vae, n_cls, per_cls, size)
    ref = work / "VIRTUAL_rehearsal_ref.npz"
    ref_stats_file(folder, size, ref)
    rows.append(dict(stage="data + VAE + ref stats", wall_s=round(time.perf_counter() - t, 1), peak_rss_mib=None, rc=0))

    export = (
        "import torch; from drifting.tokenizer import export_latent_cache, load_vae; "
        f"export_latent_cache({str(folder)!r}, load_vae({str(vae)!r}), {str(cache)!r}, resolution={size}, "
        f"chunk_size={max(8, n_cls * per_cls // 6)}, num_workers=1, progress=False)"
    )
    stage(
        rows,
        "latent export (killed)",
        [py, "-c", export],
        lambda: (cache / "shard_00001.json").exists(),
        env,
        work / "export1.log",
    )
    stage(rows, "latent export (resumed)", [py, "-c", export], None, env, work / "export2.log")
    assert json.loads((cache / "manifest.json").read_text())["complete"]

    mae = drifting + [
        "run",
        "nbs/run_mae.ipynb",
        str(work / "mae.ipynb"),
        "-p",
        "data",
        str(cache),
        "-p",
        "vae",
        "None",
        "-p",
        "resolution",
        "None",
        "-p",
        "preset",
        "tiny",
        "-p",
        "steps",
        str(mae_steps),
        "-p",
        "batch_size",
        "32",
        "-p",
        "warmup",
        "2",
        "-p",
        "finetune_last_steps",
        "0",
        "-p",
        "ckpt_every",
        str(mae_steps // 4),
        "-p",
        "out_dir",
        str(work / "mae_latest"),
        "-p",
        "heldout_frac",
        "0.25",
        "-p",
        "progress",
        "False",
    ]
    stage(
        rows,
        "MAE pre-training (killed)",
        mae,
        lambda: newest("mae/*/artifacts/checkpoints/step_*.pt", runs) is not None,
        env,
        work / "mae1.log",
    )
    mae_bundle = newest("mae/*", runs)
    stage(rows, "MAE pre-training (resumed)", mae + ["-p", "resume", str(mae_bundle)], None, env, work / "mae2.log")
    encoder = (work / "mae_latest" / "encoder").resolve()

    train = drifting + [
        "run",
        "nbs/run_latent.ipynb",
        str(work / "train.ipynb"),
        "-p",
        "dataset",
        str(cache),
        "-p",
        "vae",
        str(vae),
        "-p",
        "feature_encoder",
        str(encoder),
        "-p",
        "preset",
        "tiny",
        "-p",
        "nproc",
        "2",
        "-p",
        "steps",
        str(steps),
        "-p",
        "ckpt_every",
        str(steps // 4),
        "-p",
        "keep_every",
        str(steps // 4),
        "-p",
        "eval_per_class",
        "2",
        "-p",
        "fid_n",
        "0",
        "-p",
        "progress",
        "False",
    ]
    stage(rows, "train (nproc 2)", train, None, env, work / "train.log")
    run = newest("latent/*", runs)

    ev = drifting + [
        "run",
        "nbs/run_eval.ipynb",
        str(work / "eval.ipynb"),
        "-p",
        "checkpoint",
        str(run),
        "-p",
        "checkpoints",
        f"last:{last_k}",
        "-p",
        "n_per_class",
        str(n_eval),
        "-p",
        "alphas",
        alphas,
        "-p",
        "metric_net",
        "rehearsal",
        "-p",
        "ref_stats",
        str(ref),
        "-p",
        "ref_stats_protocol",
        "rehearsal: random-conv features of the synthetic class folder",
        "-p",
        "dataset",
        str(folder),
        "-p",
        "resolution",
        str(size),
        "-p",
        "nn_audit",
        "False",
        "-p",
        "progress",
        "False",
    ]
    stage(rows, f"eval ({n_eval}/class, last {last_k})", ev, None, env, work / "eval.log")
    ev_bundle = newest("eval/*", runs)
    metrics = json.loads((ev_bundle / "metrics.json").read_text())
    total = round(time.perf_counter() - t0, 1)
    print(f"{'total':<28} {total:>8.1f} s; eval bundle {ev_bundle}")
    res = dict(
        classes=n_cls,
        per_class=per_cls,
        size=size,
        samples_per_alpha=n_cls * n_eval,
        stages=rows,
        total_s=total,
        best_checkpoint_step=metrics["scalars"].get("best_checkpoint_step"),
        eval_bundle=str(ev_bundle),
        work=str(work),
    )
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
