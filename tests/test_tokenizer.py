"""Tokenizer end to end: the built-in VAE cache (reuse, env var, killed training), save/load, resumable exports."""
import json, os, subprocess, sys, time

import pytest
import torch

import drifting.builtin_vae as bv
from drifting.builtin_vae import BuiltinRecipe, builtin_key, builtin_vae
from drifting.data import batches, load_dataset
from drifting.latent_cache import LatentCacheWriter, load_latent_cache
from drifting.runs import get_vae
from drifting.tokenizer import export_latent_cache, load_vae

QUICK = BuiltinRecipe(steps=3, batch_size=16, scale_items=256, eval_items=64)  # plumbing only: seconds, not a model


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    builtin_vae(root, recipe=QUICK, progress=False)
    return root


def test_builtin_is_reused_not_retrained(cache, monkeypatch):
    folder = cache / builtin_key(recipe=QUICK)
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors", "training.json"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    rec = json.loads((folder / "training.json").read_text())
    assert rec["key"] == folder.name and rec["recipe"]["steps"] == 3 and rec["n_train"] == 4500
    assert rec["data_fingerprint"] == load_dataset("mnist5k", resolution=32).fingerprint
    assert set(rec["versions"]) == {"torch", "diffusers"}

    def no_training(*a, **k): raise AssertionError("the cached VAE was retrained")
    monkeypatch.setattr(bv, "train_builtin_vae", no_training)
    t = time.time()
    tok = builtin_vae(cache, recipe=QUICK, progress=False)
    assert time.time() - t < 30
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    assert tok.scaling_factor == rec["scaling_factor"] and tok.name == f"builtin:{folder.name}"
    assert sorted(p.name for p in cache.iterdir()) == [folder.name]  # no temporary folders left behind


def test_builtin_folder_roundtrips_bit_exactly(cache):
    tok = builtin_vae(cache, recipe=QUICK, progress=False)
    plain = load_vae(cache / builtin_key(recipe=QUICK))  # the folder as an ordinary save_pretrained directory
    a, b = tok.vae.state_dict(), plain.vae.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = load_dataset("mnist5k", split="heldout", resolution=32).images[:8]
    g = lambda: torch.Generator().manual_seed(5)
    assert torch.equal(tok.encode(x, generator=g()), plain.encode(x, generator=g()))
    assert torch.equal(tok.decode(tok.encode(x, sample=False)), plain.decode(plain.encode(x, sample=False)))
    assert plain.fingerprint() == tok.fingerprint()


def test_env_var_and_get_vae_builtin(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFTING_CACHE", str(tmp_path))
    tok = get_vae("builtin", recipe=QUICK, progress=False)
    assert (tmp_path / "vae" / builtin_key(recipe=QUICK) / "training.json").exists()
    assert tok.latent_shape((1, 32, 32)) == (4, 8, 8)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a): raise RuntimeError("disk full")
    monkeypatch.setattr(bv, "_write_record", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        builtin_vae(tmp_path, recipe=QUICK, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither a final folder nor a temporary one


def test_killed_training_is_never_loaded(tmp_path):
    # the process dies by SIGKILL after the weights are written but before the folder is complete
    code = ("import os, signal, drifting.builtin_vae as bv\n"
            "bv._write_record = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"bv.builtin_vae({str(tmp_path)!r}, recipe=bv.BuiltinRecipe(**{QUICK.__dict__!r}), progress=False)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    key = builtin_key(recipe=QUICK)
    left = list(tmp_path.iterdir())
    assert not (tmp_path / key).exists() and len(left) == 1 and left[0].name.startswith(f".tmp-{key}-")
    assert (left[0] / "diffusion_pytorch_model.safetensors").exists()  # the half-written folder is really there
    tok = builtin_vae(tmp_path, recipe=QUICK, progress=False)  # trains again instead of loading the half folder
    assert (tmp_path / key / "training.json").exists() and tok.name == f"builtin:{key}"


def test_export_resumes_bit_exactly_after_a_crash(cache, tmp_path, monkeypatch):
    tok = builtin_vae(cache, recipe=QUICK, progress=False)
    ds = load_dataset("mnist5k", split="all", resolution=32)
    ds.images, ds.labels = ds.images[:70], ds.labels[:70]
    kw = dict(batch_size=16, chunk_size=32, seed=1, progress=False)
    full = export_latent_cache(ds, tok, tmp_path / "full", **kw)

    write, calls = LatentCacheWriter.write, []
    def crash_on_second(self, *a, **k):
        calls.append(1)
        if len(calls) == 2: raise KeyboardInterrupt("killed")
        return write(self, *a, **k)
    monkeypatch.setattr(LatentCacheWriter, "write", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        export_latent_cache(ds, tok, tmp_path / "resumed", **kw)
    monkeypatch.setattr(LatentCacheWriter, "write", write)
    assert load_latent_cache(tmp_path / "resumed", allow_incomplete=True).manifest["count"] == 32
    export_latent_cache(ds, tok, tmp_path / "resumed", **kw)

    a, b = load_latent_cache(full), load_latent_cache(tmp_path / "resumed")
    assert [s["count"] for s in a.manifest["shards"]] == [32, 32, 6]
    assert a.manifest["shards"] == b.manifest["shards"]  # identical shard hashes: bit-exact resume
    assert torch.equal(a.latents, b.latents) and torch.equal(a.latents_flip, b.latents_flip)
    assert a.manifest["scaling_factor"] == tok.scaling_factor and a.manifest["encoder"] == tok.name
    # the cache is a dataset: split like its source, flips used by the loader
    lat = load_dataset(full, split="all")
    assert lat.kind == "latents" and lat.images.shape == (70, 4, 8, 8) and lat.flipped is not None
    x, y = next(batches(lat, 8, torch.Generator().manual_seed(0), flip=True))
    assert x.shape == (8, 4, 8, 8)


def test_export_by_name(cache, tmp_path):
    tok = builtin_vae(cache, recipe=QUICK, progress=False)
    out = export_latent_cache("digits8", tok, tmp_path / "d", resolution=32, chunk_size=48, max_chunks=1,
                              progress=False)
    c = load_latent_cache(out, allow_incomplete=True)
    src = load_dataset("digits8", split="all", resolution=32)
    assert c.manifest["source_fingerprint"] == src.fingerprint and c.manifest["source_n"] == len(src) == 1797
    assert c.manifest["count"] == 48 and torch.equal(c.labels, src.labels[:48])
    with pytest.raises(ValueError, match="not images"):
        export_latent_cache(load_dataset(out, split="all", allow_incomplete=True), tok, tmp_path / "e")
