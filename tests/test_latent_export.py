"""Streaming latent-cache export of a class folder (issue 11 item 5): DataLoader workers, ranks, kill and resume."""
import json, subprocess, sys

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from drifting.data import load_dataset, load_image_folder
from drifting.latent_cache import load_latent_cache, open_latent_cache
from drifting.tokenizer import export_latent_cache, load_vae

KW = dict(resolution=16, batch_size=3, chunk_size=8, seed=2, progress=False)  # 27 items: shards of 8, 8, 8, 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    "fp32 convolutions give other bits with another torch thread count: every export here (subprocesses too) uses 1."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    g = np.random.default_rng(0)
    for c in ("ant", "bee", "cat"):  # 3 classes x 9 PNGs of mixed sizes (the ADM crop brings them to 16x16)
        (root / "imgs" / c).mkdir(parents=True)
        for i in range(9):
            h, w = int(g.integers(16, 40)), int(g.integers(16, 40))
            Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "imgs" / c / f"{i:02d}.png")
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5).save_pretrained(root / "vae")
    tok = load_vae(root / "vae")
    ref = export_latent_cache(load_image_folder(root / "imgs", 16), tok, root / "ref", **KW)  # in memory, as before
    return dict(root=root, imgs=root / "imgs", tok=tok, ref=ref)


def shards(path): return json.loads((path / "manifest.json").read_text())["shards"]


def test_streamed_equals_in_memory_and_workers_do_not_matter(env, tmp_path):
    one = export_latent_cache(env["imgs"], env["tok"], tmp_path / "w1", num_workers=0, **KW)
    two = export_latent_cache(env["imgs"], env["tok"], tmp_path / "w2", num_workers=2, **KW)
    assert [s["count"] for s in shards(one)] == [8, 8, 8, 3]
    assert shards(one) == shards(env["ref"]) == shards(two)  # the same file hashes: bit-identical latents
    a, b = load_latent_cache(env["ref"]), load_latent_cache(two)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.latents_flip, b.latents_flip)
    assert torch.equal(a.labels, b.labels)
    m = json.loads((one / "manifest.json").read_text())
    assert m["complete"] and m["count"] == 27 and m["count_per_class"] == {"0": 9, "1": 9, "2": 9}
    assert m["source_fingerprint"] == load_image_folder(env["imgs"], 16).fingerprint  # from the workers' digests
    assert m["class_names"] == ["ant", "bee", "cat"]


def test_killed_export_resumes_to_the_uninterrupted_bytes(env, tmp_path):
    out = tmp_path / "killed"
    # a separate process is SIGKILLed in the middle of its third shard (the latents file written, the rest not)
    code = f"""
import os, signal
import torch
torch.set_num_threads(1)
from drifting.latent_cache import LatentCacheWriter
from drifting.tokenizer import export_latent_cache, load_vae
import numpy as np
save, calls = np.save, []
def dying_save(f, a, **k):
    calls.append(1)
    save(f, a, **k)
    if len(calls) == 7: os.kill(os.getpid(), signal.SIGKILL)  # 3 files per shard: the 7th is shard 2's latents
np.save = dying_save
export_latent_cache({str(env["imgs"])!r}, load_vae({str(env["root"] / "vae")!r}), {str(out)!r}, num_workers=2, **{KW!r})
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    assert sorted(p.name for p in out.glob("*.json")) == ["manifest.json", "shard_00000.json", "shard_00001.json"]
    assert list(out.glob(".shard_00002.latents.npy.*.tmp"))  # killed while writing shard 2: only a temporary file
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    part = load_latent_cache(out, allow_incomplete=True)
    assert part.manifest["count"] == 16
    export_latent_cache(env["imgs"], env["tok"], out, num_workers=1, **KW)  # resume
    assert shards(out) == shards(env["ref"])  # stale temporary files are ignored


def test_ranks_write_disjoint_shards_without_a_process_group(env, tmp_path):
    out = tmp_path / "ranks"
    export_latent_cache(env["imgs"], env["tok"], out, rank=1, world_size=2, **KW)
    assert sorted(p.name for p in out.glob("shard_*.json")) == ["shard_00001.json", "shard_00003.json"]
    assert not json.loads((out / "manifest.json").read_text())["complete"]  # rank 0's shards are missing
    export_latent_cache(env["imgs"], env["tok"], out, rank=0, world_size=2, **KW)
    assert shards(out) == shards(env["ref"])
    with pytest.raises(ValueError, match="rank and world_size"):
        export_latent_cache(env["imgs"], env["tok"], tmp_path / "x", rank=2, world_size=2, **KW)


def test_float16_storage_halves_the_bytes(env, tmp_path):
    h = export_latent_cache(env["imgs"], env["tok"], tmp_path / "h", dtype="float16", **KW)
    a, b = open_latent_cache(env["ref"]), open_latent_cache(h)
    size = lambda c, d: sum(s["bytes"]["latents"] + s["bytes"]["flip"] for s in c.manifest["shards"])
    za, zb = a.latents.materialize(), b.latents.materialize()
    assert b.latents.dtype == torch.float16
    err = ((zb.float() - za).abs().max() / za.abs().max()).item()
    assert 0 < err <= 2 ** -11  # fp16's relative rounding: the only change
    assert size(b, h) < 0.55 * size(a, None)
    print(f"fp16 cache: latent bytes {size(b, h)} vs {size(a, None)} (fp32), max error {err:.2e} of the max |latent|")
    lazy = load_dataset(h, lazy=True)  # training reads fp16 rows lazily; the split is that of the source
    assert lazy.split == load_dataset(env["ref"]).split and lazy.images[torch.tensor([3, 0])].dtype == torch.float16


def test_training_reads_a_lazy_cache_like_the_whole_one(tmp_path):
    "A trainer on a memory-mapped cache takes the same steps as on the cache in memory; a job folder references the shards."
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from _tiny_trainer import tiny_encoder
    from drifting.distributed import build_trainer, save_job
    from drifting.feature_nets import build_features
    from drifting.latent_cache import LatentCacheWriter, ShardedRows
    from drifting.streams import data_stream
    from drifting.train import Trainer, train_config
    g = torch.Generator().manual_seed(1)
    lat = torch.randn(60, 2, 8, 8, generator=g)
    w = LatentCacheWriter(tmp_path / "c", dict(source_fingerprint="s", encoder="e", scaling_factor=1.0, class_names=list("abcde")))
    for k in range(3): w.write(k, 20 * k, lat[20 * k:20 * k + 20], torch.arange(20) % 5, lat[20 * k:20 * k + 20].flip(-1))
    w.finish(3)

    def make(lazy):
        ds = load_dataset(tmp_path / "c", lazy=lazy)
        # the tiny random encoder as an export folder the config names: a job rebuilds it from the config
        cfg = train_config("tiny", n_c=4, push_per_step=8, flip=True, feature_encoder=tiny_encoder(), every_k_block=1)
        return Trainer(cfg, data_stream(cfg, ds), build_features(cfg, ds, "cpu", progress=False)[0], "cpu")
    a, b = make(False), make(True)
    assert isinstance(b.data.ds.images, ShardedRows) and not isinstance(a.data.ds.images, ShardedRows)
    for _ in range(2): assert a.step()["loss"] == b.step()["loss"]
    assert all(torch.equal(p, q) for p, q in zip(a.gen.parameters(), b.gen.parameters()))
    job = save_job(tmp_path / "job", b)
    assert (job / "data.pt").stat().st_size < lat.numel() * 4  # the latents are not copied into the job
    c = build_trainer(job)
    assert isinstance(c.data.ds.images, ShardedRows) and c.data.ds.images.shape == b.data.ds.images.shape
    x, y = b.data.batch(5); x2, y2 = c.data.batch(5)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_large_caches_are_read_lazily_by_default(env, monkeypatch):
    import drifting.data as dd
    from drifting.latent_cache import ShardedRows
    assert not isinstance(load_dataset(env["ref"]).images, ShardedRows)  # small: in memory, as before
    monkeypatch.setattr(dd, "LAZY_BYTES", 1000)  # the test cache holds 27 x 2 x 1 KB of latents
    lazy = load_dataset(env["ref"])
    assert isinstance(lazy.images, ShardedRows)
    with pytest.raises(AttributeError, match="lazily read latent cache"):
        lazy.images.float()


def test_export_on_two_processes(env, tmp_path):
    "Under a process group of 2 (gloo), the ranks share the shards and rank 0 writes the manifest: the same cache."
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from drifting.distributed import launch
    out = tmp_path / "pg"
    launch(__import__("_dist_workers").export_worker, 2, str(env["imgs"]), str(env["root"] / "vae"), str(out), KW,
           log_dir=tmp_path / "logs")
    recs = {k: json.loads((out / f"shard_0000{k}.json").read_text())["seconds"] for k in range(4)}
    assert json.loads((out / "manifest.json").read_text())["complete"] and len(recs) == 4
    assert shards(out) == shards(env["ref"])
