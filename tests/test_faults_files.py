"""Fault catalogue, files that change under a run or arrive from outside (issue 23, item 4): a latent shard truncated
or rewritten while it is read, a finished export run again, hand-placed or crafted release files, Flax's chunked
layout, the Inception file replaced between its hash and its load, a single-machine launch's listeners. Each case
asserts the error names the file and says what to do, and that nothing written earlier changed."""
import hashlib, io, json, os, shutil, subprocess, sys, unittest.mock
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from _faults import audit, snapshot

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "official" / "models"


# --- the Inception file: hashed bytes are the loaded bytes ------------------------------------------------------------

class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 2048, 1)

    def forward(self, img):
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(img, 1)).flatten(1)


def test_inception_file_swapped_after_its_hash_is_not_loaded(tmp_path):
    "The file replaced between hash and load: the network is the hashed one, and the record names its hash."
    from drifting.metrics import extract_features
    from drifting.metrics_nets import tf_inception
    p, other = tmp_path / "inc.pt", tmp_path / "other.pt"
    torch.manual_seed(0); torch.jit.script(_Tiny()).save(str(p)); torch.jit.script(_Tiny()).save(str(other))
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    want = extract_features(tf_inception(p, allow_unknown=True), x)
    sha_before, real = hashlib.sha256(p.read_bytes()).hexdigest(), torch.jit.load

    def swap_then_load(f, *a, **k):
        p.write_bytes(other.read_bytes()); return real(f, *a, **k)

    with unittest.mock.patch("torch.jit.load", side_effect=swap_then_load):
        inc = tf_inception(p, allow_unknown=True)
    assert inc.weights_sha256 == sha_before
    assert torch.allclose(extract_features(inc, x), want, atol=1e-6), "the swapped-in file was loaded under the old hash"


# --- a latent shard written over while a run reads it ----------------------------------------------------------------

def _cache(d: Path) -> Path:
    from drifting.latent_cache import LatentCacheWriter
    g = torch.Generator().manual_seed(0)
    w = LatentCacheWriter(d, dict(source_fingerprint="s", encoder="e", scaling_factor=0.5))
    for k in range(3):
        w.write(k, 64 * k, torch.randn(64, 4, 8, 8, generator=g), torch.arange(64) % 10, torch.randn(64, 4, 8, 8, generator=g))
    w.finish(3)
    return d


_READER = """
import shutil, sys
from pathlib import Path
from drifting.latent_cache import open_latent_cache
root, how = Path(sys.argv[1]), sys.argv[2]
c = open_latent_cache(root)
first = c.latents[[0, 70, 150]].clone()                 # every shard read once: its pages were mapped
victim = root / "shard_00001.latents.npy"
if how == "cp":                                          # cp of a shorter file over it: same inode, truncated
    shutil.copyfile(root / "short.npy", victim)
else:                                                    # rsync --inplace: same inode, same size, new bytes
    with open(victim, "r+b") as f: f.seek(200); f.write(bytes(512))
try:
    c.latents[[65, 120]]                                 # rows of the rewritten shard
except ValueError as e:
    print("ERROR:", e); sys.exit(3)
print("read without error"); sys.exit(0)
"""


@pytest.mark.parametrize("how", ["cp", "rsync-inplace"])
def test_shard_rewritten_while_read_gives_an_error_naming_it(tmp_path, how):
    "A shard truncated or rewritten in place under a reader: not a SIGBUS, an error naming the file; the rest is kept."
    root = _cache(tmp_path / "cache")
    np.save(root / "short.npy", np.zeros((3, 4, 8, 8), np.float32))
    before = snapshot(root)
    r = subprocess.run([sys.executable, "-c", _READER, str(root), how], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 3, f"exit {r.returncode} (-7 is SIGBUS): {r.stdout[-500:]} {r.stderr[-2000:]}"
    msg = r.stdout
    assert str(root / "shard_00001.latents.npy") in msg and "changed while this process reads it" in msg, msg
    assert "re-export" in msg and "resume from the last checkpoint" in msg
    after = snapshot(root)
    assert {k: v for k, v in after.items() if k != "shard_00001.latents.npy"} == \
        {k: v for k, v in before.items() if k != "shard_00001.latents.npy"}  # nothing else was touched
    audit(root)


def test_shard_changed_between_its_check_and_its_map_is_refused(tmp_path, monkeypatch):
    "The file mapped must be the file whose hash was checked."
    import drifting.latent_cache as lc
    root = _cache(tmp_path / "cache")
    real = lc._map_npy

    def rewrite_then_map(p):
        if p.name == "shard_00002.flip.npy":
            with open(p, "r+b") as f: f.seek(300); f.write(bytes(64))
        return real(p)

    monkeypatch.setattr(lc, "_map_npy", rewrite_then_map)
    with pytest.raises(ValueError, match="shard file shard_00002.flip.npy changed while being opened; re-open it"):
        lc.open_latent_cache(root)


# --- a finished export run again -------------------------------------------------------------------------------------

def test_finished_folder_export_run_again_returns_its_folder(tmp_path):
    "The paper's job (a class folder, streamed) run twice: the second call returns the folder and writes nothing."
    from diffusers import AutoencoderKL
    from PIL import Image
    from drifting.latent_cache import open_latent_cache
    from drifting.tokenizer import export_latent_cache, load_vae
    g = np.random.default_rng(0)
    for c in ("ant", "bee"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(g.integers(0, 256, (20, 18, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5).save_pretrained(tmp_path / "vae")
    tok, kw = load_vae(tmp_path / "vae"), dict(resolution=16, batch_size=4, chunk_size=4, progress=False)
    out = export_latent_cache(tmp_path / "imgs", tok, tmp_path / "cache", **kw)
    before = snapshot(out)
    assert export_latent_cache(tmp_path / "imgs", tok, tmp_path / "cache", **kw) == out
    assert snapshot(out) == before and open_latent_cache(out).manifest["complete"]
    (tmp_path / "imgs" / "bee" / "9.png").write_bytes((tmp_path / "imgs" / "bee" / "0.png").read_bytes())
    with pytest.raises(ValueError, match="cannot resume .*'source_listing'.*use a new directory"):
        export_latent_cache(tmp_path / "imgs", tok, tmp_path / "cache", **kw)  # other images: still refused
    assert snapshot(out) == before
    audit(out)


# --- release files: Flax's chunked layout, names, crafted sizes ------------------------------------------------------

def flax_bytes(tree, chunk_bytes: int = 2**30) -> bytes:
    "Bytes laid out as flax.serialization.msgpack_serialize writes them; its chunk size (2**30) as a parameter."
    def prep(t):
        if isinstance(t, dict): return {k: prep(v) for k, v in t.items()}
        if t.nbytes <= chunk_bytes: return t
        step, flat = max(1, chunk_bytes // t.dtype.itemsize), t.reshape(-1)
        return {"__msgpack_chunked_array__": True, "shape": {str(i): n for i, n in enumerate(t.shape)},
                "chunks": {str(i): flat[j:j + step] for i, j in enumerate(range(0, flat.size, step))}}

    def ext(x):
        if isinstance(x, np.ndarray):
            return msgpack.ExtType(1, msgpack.packb((x.shape, x.dtype.name, x.tobytes("C")), use_bin_type=True))
        raise TypeError(type(x))
    return msgpack.packb(prep(tree), default=ext, strict_types=True)


def _tree(flat: dict) -> dict:
    out = {}
    for name, a in flat.items():
        *path, leaf = name.split("/"); d = out
        for p in path: d = d.setdefault(p, {})
        d[leaf] = a
    return out


def test_flax_chunked_layout_of_a_real_model_loads_the_same_generator(tmp_path):
    "The fixture generator re-written with every array over 1 KB chunked as Flax chunks: the same weights, the same output."
    from drifting.official import load_official_generator, read_flax_msgpack
    src = FIX / "gen" / "jax" / "tiny-shared"
    flat = read_flax_msgpack(src / "ema_params.msgpack")
    d = tmp_path / "chunked"; d.mkdir()
    (d / "metadata.json").write_bytes((src / "metadata.json").read_bytes())
    (d / "ema_params.msgpack").write_bytes(flax_bytes({"params": _tree(flat)}, chunk_bytes=1024))
    raw = msgpack.unpackb((d / "ema_params.msgpack").read_bytes(), strict_map_key=False)
    assert isinstance(raw["params"]["Embed_0"]["embedding"]["shape"], dict)  # really Flax's chunked form
    assert len(raw["params"]["Embed_0"]["embedding"]["chunks"]) > 1
    got = read_flax_msgpack(d / "ema_params.msgpack")
    assert sorted(got) == sorted(flat) and all(np.array_equal(got[k], flat[k]) for k in flat)
    a, b = load_official_generator(src), load_official_generator(d)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_names_with_a_slash_do_not_collide(tmp_path):
    "{'m': {'k': A}, 'm/k': B} would flatten to one name: refused, naming the file and the name."
    from drifting.official import read_flax_msgpack
    p = tmp_path / "ema_params.msgpack"
    p.write_bytes(flax_bytes({"m": {"k": np.ones(3, np.float32)}, "m/k": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=r"is not a Flax parameter file .*'m/k'.* holds '/'") as e:
        read_flax_msgpack(p)
    assert str(p) in str(e.value)


def test_crafted_msgpack_is_refused_with_bounded_memory(tmp_path):
    """A 5.8 MB file of small maps (today: ~27x its size in Python objects) is refused with an error naming it; peak
    Python memory stays under its bytes plus MSGPACK_MAX_OBJECTS small dicts (64 B each at most: one per map or entry)."""
    import tracemalloc
    from drifting.official import MSGPACK_MAX_OBJECTS, read_flax_msgpack
    p = tmp_path / "ema_params.msgpack"
    p.write_bytes(msgpack.packb({f"m{j}": {str(i): {} for i in range(15)} for j in range(100_000)}))
    size = p.stat().st_size
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="not a Flax parameter file this reader accepts: more than") as e:
            read_flax_msgpack(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(p) in str(e.value)
    assert peak < size + 64 * MSGPACK_MAX_OBJECTS, f"peak {peak / size:.1f}x the file's size"


@pytest.mark.parametrize("field,value,match", [
    ("hidden_size", 1 << 16, "shape mismatch"), ("depth", 4000, "says depth 4000, its ema_params.msgpack holds 2 blocks")])
def test_metadata_sizes_are_checked_against_the_weights_before_building(tmp_path, monkeypatch, field, value, match):
    "metadata.json stating a huge model: refused before any module is built on a real device."
    import drifting.official as off
    src = FIX / "gen" / "jax" / "tiny-shared"
    meta = json.loads((src / "metadata.json").read_text())
    mc = dict(meta["model_config"], **{field: value}, **({"cond_dim": value} if field == "hidden_size" else {}))
    (tmp_path / "metadata.json").write_text(json.dumps(dict(meta, model_config=mc)))
    (tmp_path / "ema_params.msgpack").write_bytes((src / "ema_params.msgpack").read_bytes())
    built, real = [], off.Generator

    def watched(cfg):
        built.append(torch.empty(0).device.type)  # where its parameters would be allocated
        if built[-1] != "meta": raise AssertionError("built on a real device before the weights were checked")
        return real(cfg)

    monkeypatch.setattr(off, "Generator", watched)
    with pytest.raises(ValueError, match=match) as e:
        off.load_official_generator(tmp_path)
    assert str(tmp_path) in str(e.value)


# --- hand-placed "released" files ------------------------------------------------------------------------------------

def _place(cache: Path, name="ablation", kind="gen", src="gen") -> Path:
    d = cache / "manual" / "models" / kind / "jax" / name; d.mkdir(parents=True)
    for f in ("metadata.json", "ema_params.msgpack"):
        (d / f).write_bytes((FIX / src / "jax" / "tiny-shared" / f).read_bytes())
    return d


def _hub_cache(cache: Path, sub: str, files: dict, revision: str):
    "A hub cache as huggingface_hub writes it: blobs named by sha256 (LFS) or git blob id, snapshot symlinks."
    from drifting.pipeline import OFFICIAL_REPO
    repo = cache / "hub" / f"models--{OFFICIAL_REPO.replace('/', '--')}"
    snap = repo / "snapshots" / revision / sub; snap.mkdir(parents=True); (repo / "blobs").mkdir(exist_ok=True)
    for f, data in files.items():
        etag = hashlib.sha256(data).hexdigest() if f.endswith(".msgpack") else \
            hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (repo / "blobs" / etag).write_bytes(data)
        (snap / f).symlink_to(os.path.relpath(repo / "blobs" / etag, snap))


def test_hand_placed_release_unchecked_is_recorded_unverified(tmp_path):
    "Offline, nothing to check against: used, but never recorded as the pinned release nor with the paper's FID."
    from drifting.pipeline import OFFICIAL_REVISION, DriftingPipeline, from_official, resolve_checkpoint
    d = _place(tmp_path); before = snapshot(d)
    with pytest.warns(UserWarning, match="recorded as unverified"):
        gen = from_official("ablation", cache_dir=tmp_path, local_files_only=True)
    assert gen.info["verified"] is False and "paper_fid" not in gen.info and "revision" not in gen.info
    assert gen.info["sha256"]["ema_params.msgpack"] == hashlib.sha256((d / "ema_params.msgpack").read_bytes()).hexdigest()
    assert not (tmp_path / "converted" / f"ablation@{OFFICIAL_REVISION[:12]}").exists()
    pipe = DriftingPipeline.from_pretrained("hf://ablation", vae=None, cache_dir=tmp_path, local_files_only=True)
    assert pipe.info["verified"] is False and "paper_fid" not in pipe.info
    b = resolve_checkpoint("ablation", cache_dir=tmp_path, local_files_only=True)
    assert "unverified" in b.name
    assert json.loads((b / "provenance" / "repro.json").read_text())["official"]["verified"] is False
    ck = torch.load(b / "artifacts" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["official"]["verified"] is False and ck["official"]["revision"] is None
    assert snapshot(d) == before  # the user's files are untouched
    audit(tmp_path)


def test_hand_placed_release_that_differs_from_the_pinned_files_is_refused(tmp_path):
    "The pinned revision's ids are known (hub cache) and the hand-placed weights differ: refused, nothing converted."
    from drifting.pipeline import OFFICIAL_REVISION, from_official
    d = _place(tmp_path); before = snapshot(d)
    other = (FIX / "gen" / "jax" / "tiny-shared" / "ema_params.msgpack").read_bytes()[:-4] + bytes(4)
    _hub_cache(tmp_path, "models/gen/jax/ablation", {"metadata.json": (d / "metadata.json").read_bytes(),
                                                      "ema_params.msgpack": other}, OFFICIAL_REVISION)
    with pytest.raises(ValueError, match=r"\['ema_params.msgpack'\] differ from the files of the pinned release") as e:
        from_official("ablation", cache_dir=tmp_path, local_files_only=True)
    assert str(d) in str(e.value) and "download the release again" in str(e.value)
    assert not (tmp_path / "converted").exists() or not any((tmp_path / "converted").iterdir())
    assert snapshot(d) == before


def test_hand_placed_release_matching_the_pinned_files_is_the_release(tmp_path):
    from drifting.pipeline import OFFICIAL_REVISION, from_official
    d = _place(tmp_path)
    _hub_cache(tmp_path, "models/gen/jax/ablation", {f: (d / f).read_bytes() for f in ("metadata.json", "ema_params.msgpack")},
               OFFICIAL_REVISION)
    gen = from_official("ablation", cache_dir=tmp_path, local_files_only=True)
    assert (gen.info["verified"], gen.info["revision"], gen.info["paper_fid"]) == (True, OFFICIAL_REVISION, 8.46)


def test_a_conversion_made_before_files_were_checked_is_set_aside_not_trusted(tmp_path):
    "A converted copy without a `verified` record (made by earlier code from hand-placed files) is kept, renamed, unused."
    from drifting.pipeline import OFFICIAL_REVISION, convert_official, from_official
    d = _place(tmp_path)
    old = tmp_path / "converted" / f"ablation@{OFFICIAL_REVISION[:12]}"
    convert_official(d, old, dict(name="ablation", revision=OFFICIAL_REVISION, paper_fid=8.46))  # as earlier code did
    before = snapshot(old)
    with pytest.warns(UserWarning, match="recorded as unverified"):
        gen = from_official("ablation", cache_dir=tmp_path, local_files_only=True)
    assert gen.info["verified"] is False and not old.exists()
    (kept,) = [p for p in old.parent.iterdir() if p.name.startswith(old.name + ".unchecked-")]
    assert snapshot(kept) == before


# --- a single-machine launch listens on loopback only ----------------------------------------------------------------

_LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def _listening(pid: int) -> list:
    import psutil
    return sorted({c.laddr.ip for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN})


def listeners_of_a_job():
    "Run in each worker: join the group, exchange a pickled object, report what this worker and its agent listen on."
    import torch.distributed as dist
    from drifting.distributed import init_distributed, teardown
    init_distributed("gloo")
    try:
        got = [None] * dist.get_world_size(); dist.all_gather_object(got, {"rank": dist.get_rank()})  # pickles
        out = dict(worker=_listening(os.getpid()), agent=_listening(os.getppid()), master=os.environ["MASTER_ADDR"])
        dist.barrier()
        return out
    finally:
        teardown()


def test_single_machine_launch_binds_its_listeners_to_loopback(tmp_path):
    "Every listening socket of the job (the agent's store, gloo in each worker) is on 127.0.0.1, none on all interfaces."
    from drifting.distributed import launch
    env = {k: os.environ.get(k) for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}
    res = launch(listeners_of_a_job, 2)
    assert [r["master"] for r in res] == ["127.0.0.1"] * 2
    for r in res:
        assert r["worker"] and r["agent"], r  # there were listeners to look at
        assert set(r["worker"] + r["agent"]) <= set(_LOOPBACK), r
    assert {k: os.environ.get(k) for k in env} == env  # the launcher's environment is as it was
    assert not _listening(os.getpid())  # nothing left listening after the job
