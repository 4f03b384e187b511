"""Datasets end to end: built-in data, splits across processes, class folders with bad inputs, latent caches on disk."""
import json, shutil, subprocess, sys

import numpy as np
import pytest
import torch
from PIL import Image

from drifting.core import sha256_arrays
from drifting.data import ImageDataset, batches, load_dataset, scan_image_folder, stratified_split
from drifting.latent_cache import LatentCacheWriter, load_latent_cache, save_latent_cache

MAN = dict(source_fingerprint="f" * 64, encoder="test-ae", scaling_factor=0.25)


def _split_hash_in_subprocess(seed):
    code = ("from drifting.data import load_dataset; "
            f"d = load_dataset('mnist5k', split='heldout', seed={seed}); print(d.split['split_hash'], d.fingerprint)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"})
    return out.stdout.split()


def test_mnist5k_default_split_is_reproducible_across_processes():
    tr = load_dataset()  # the default: MNIST-5k, train split
    he = load_dataset(split="heldout")
    assert tr.name == "mnist5k" and len(tr) == 4500 and len(he) == 500
    assert tr.counts().tolist() == [450] * 10 and he.counts().tolist() == [50] * 10
    # the images of the two parts are different digits (no duplicate leaks through the split)
    a = {x.numpy().tobytes() for x in tr.images}; b = {x.numpy().tobytes() for x in he.images}
    assert len(a) == 4500 and len(b) == 500 and not a & b  # MNIST-5k holds no exact duplicates
    assert _split_hash_in_subprocess(0) == [he.split["split_hash"], he.fingerprint]


def test_split_does_not_depend_on_label_order():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    tr, he, h = stratified_split(labels, 0.2, seed=3)
    counts = np.bincount(labels, minlength=5)
    assert np.bincount(labels[he], minlength=5).tolist() == np.round(counts * 0.2).astype(int).tolist()
    assert len(np.intersect1d(tr, he)) == 0 and len(tr) + len(he) == 300
    # a single-item class keeps its item in train
    tr1, he1, _ = stratified_split(np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), 0.5)
    assert 10 in tr1 and len(he1) == 5


def _write_folder(root, sizes=((40, 60), (33, 17)), classes=("n01", "n02"), fmt=("png", "jpg")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / c / f"img{i}.{fmt[i % len(fmt)]}")
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA").save(root / classes[0] / "alpha.webp")
    Image.new("P", (25, 21)).save(root / classes[1] / "palette.PNG")


def test_image_folder_formats_modes_and_split(tmp_path):
    root = tmp_path / "a"
    _write_folder(root)
    (root / "n01" / "readme.txt").write_text("ignored")
    ds = load_dataset(root, split="all", resolution=16)
    assert ds.images.shape == (6, 3, 16, 16) and ds.images.dtype == torch.float32
    assert ds.class_names == ["n01", "n02"] and ds.counts().tolist() == [3, 3]
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    he = load_dataset(root, split="heldout", resolution=16, heldout_frac=0.34)
    assert he.counts().tolist() == [1, 1]
    # a copy elsewhere has the same fingerprint; editing one image changes it
    shutil.copytree(root, tmp_path / "b")
    assert load_dataset(tmp_path / "b", split="all", resolution=16).fingerprint == ds.fingerprint
    Image.new("RGB", (30, 30), (255, 0, 0)).save(root / "n02" / "img0.jpg")
    assert load_dataset(root, split="all", resolution=16).fingerprint != ds.fingerprint


@pytest.mark.parametrize("case,msg", [
    ("missing", "does not exist"), ("file", "not a directory"), ("noclasses", "no class folders"),
    ("emptyclass", "n03 holds no images"), ("corrupt", "broken.jpg"), ("sizes", "pass resolution=")])
def test_image_folder_errors_name_the_problem(tmp_path, case, msg):
    root = tmp_path / "data"
    if case == "file": root.write_text("x")
    elif case == "noclasses": root.mkdir(); (root / "a.png").write_bytes(b"")
    elif case != "missing":
        _write_folder(root)
        if case == "emptyclass": (root / "n03").mkdir()
        if case == "corrupt": (root / "n02" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises((ValueError, FileNotFoundError, NotADirectoryError), match=msg):
        load_dataset(root, resolution=16 if case != "sizes" else None)


def test_sharded_cache_resume_after_interruption(tmp_path):
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(30, 4, 4, 4, generator=g).half()
    lab = torch.arange(30) % 10
    w = LatentCacheWriter(tmp_path / "cache", dict(MAN, class_names=[str(i) for i in range(10)]))
    w.append(lat[:10], lab[:10], lat[:10].flip(-1))
    # simulate a kill during the second shard: a stray temporary file and an unrecorded shard file
    (tmp_path / "cache" / ".shard_00001.npz.abc.tmp").write_bytes(b"partial")
    (tmp_path / "cache" / "shard_00001.npz").write_bytes(b"garbage from a killed writer")
    w = LatentCacheWriter(tmp_path / "cache", dict(MAN, class_names=[str(i) for i in range(10)]))
    start = w.n_written
    assert start == 10
    for s in range(start, 30, 10):
        w.append(lat[s:s + 10], lab[s:s + 10], lat[s:s + 10].flip(-1))
    w.finish()
    c = load_latent_cache(tmp_path / "cache")
    assert torch.equal(c.latents, lat) and torch.equal(c.labels, lab) and c.latents.dtype == torch.float16
    man = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert man["count"] == 30 and [s["count"] for s in man["shards"]] == [10, 10, 10] and man["complete"]
    ds = load_dataset(tmp_path / "cache", split="all")
    assert ds.kind == "latents" and len(ds) == 30 and ds.flipped is not None
    x, y = next(batches(ds, 8, torch.Generator().manual_seed(1), flip=True))
    assert x.dtype == torch.float32 and x.shape == (8, 4, 4, 4)


def test_cache_errors(tmp_path):
    lat, lab = torch.zeros(4, 4, 2, 2), torch.tensor([0, 1, 0, 1])
    p = save_latent_cache(tmp_path / "c.npz", lat, lab, MAN)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="unreadable"):
        load_latent_cache(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="must end in .npz"):
        save_latent_cache(tmp_path / "c.pt", lat, lab, MAN)
    with pytest.raises(ValueError, match="float16 or float32"):
        save_latent_cache(tmp_path / "i.npz", lat.long(), lab, MAN)
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match="without manifest.json"):
        load_latent_cache(tmp_path / "d")
    (tmp_path / "d" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_latent_cache(tmp_path / "d")
    # an .npz that is a valid zip but not a cache
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="unreadable"):
        load_latent_cache(tmp_path / "plain.npz")
    assert load_latent_cache(p).manifest["sha256"]["latents"] == sha256_arrays(lat.numpy())
