"""Pixel class folders read lazily (#24 item 3): the rows, batches and streams a lazy folder gives equal what the
eager loader decodes, with DataLoader workers or without, and the same seed gives the same stream."""

import numpy as np
import pytest
import torch
from PIL import Image

import drifting.data as data
from drifting.data import load_dataset, load_image_folder
from drifting.folders import FolderRows, image_batches
from drifting.streams import DataStream, data_stream
from drifting.train import train_config

R = 8  # ADM crop side


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    "3 classes x 7 images of mixed sizes and formats (PNG, JPEG, grey)."
    root = tmp_path_factory.mktemp("folder") / "imgs"
    rng = np.random.default_rng(0)
    for c in ("ant", "bee", "cat"):
        (root / c).mkdir(parents=True)
        for k in range(7):
            a = rng.integers(0, 256, (9 + k, 12 - k % 3, 3), dtype=np.uint8)
            if k % 3 == 0:
                Image.fromarray(a).save(root / c / f"{k}.JPEG", quality=90)
            elif k % 3 == 1:
                Image.fromarray(a[..., 0]).save(root / c / f"{k}.png")  # grey: converted to RGB
            else:
                Image.fromarray(a).save(root / c / f"{k}.png")
    return root


def test_rows_equal_the_eager_loader(folder):
    eager, lazy = load_image_folder(folder, R, lazy=False), load_image_folder(folder, R, lazy=True, num_workers=2)
    assert isinstance(lazy.images, FolderRows) and isinstance(eager.images, torch.Tensor)
    assert lazy.fingerprint == eager.fingerprint and lazy.class_names == eager.class_names
    assert torch.equal(lazy.labels, eager.labels) and lazy.images.shape == eager.images.shape
    idx = torch.randperm(len(eager), generator=torch.Generator().manual_seed(0))[:9]
    assert torch.equal(lazy.images[idx], eager.images[idx])
    assert torch.equal(torch.cat(list(lazy.images.split(4))), eager.images)  # through 2 worker processes
    for split in ("train", "heldout"):
        a = load_dataset(folder, split, R, heldout_frac=0.3, lazy=True, num_workers=2)
        b = load_dataset(folder, split, R, heldout_frac=0.3, lazy=False)
        assert isinstance(a.images, FolderRows) and a.split == b.split
        assert torch.equal(torch.cat(list(image_batches(a.images, 3))), b.images)
        assert torch.equal(torch.cat(list(image_batches(a.images, 3, rows=[2, 0]))), b.images[[2, 0]])


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("aug", [None, "rrc"])
def test_stream_equals_the_in_memory_stream(folder, workers, aug):
    eager, lazy = load_image_folder(folder, R, lazy=False), load_image_folder(folder, R, lazy=True)
    cfg = train_config("cpu-pixel", push_per_step=4, n_c=3, seed=5, flip=True, aug=aug)
    ref = data_stream(cfg, eager)
    s = data_stream(cfg, lazy)
    s.num_workers = workers
    n = 2 * s.per_epoch + 1  # across two epoch boundaries
    got = [s.next() for _ in range(n)]
    for i, (x, y) in enumerate(got):
        rx, ry = ref.batch(i)
        assert torch.equal(x, rx) and torch.equal(y, ry), f"batch {i}"
    s.load_state_dict(dict(cursor=3))  # a resume restarts the loader at the cursor
    assert torch.equal(s.next()[0], got[3][0])


def test_same_seed_same_stream_other_seed_other_order(folder):
    lazy = load_image_folder(folder, R, lazy=True, num_workers=2)
    a, b, c = (DataStream(lazy, 5, seed=s, flip=True) for s in (1, 1, 2))
    xa = torch.cat([a.next()[0] for _ in range(4)])
    xb = torch.cat([b.next()[0] for _ in range(4)])
    xc = torch.cat([c.next()[0] for _ in range(4)])
    assert torch.equal(xa, xb)
    assert not torch.equal(xa, xc)


def test_large_folders_load_lazily_by_default(folder, monkeypatch):
    assert isinstance(load_dataset(folder, "train", R).images, torch.Tensor)  # 21 tiny images: in memory
    monkeypatch.setattr(data, "LAZY_BYTES", 0)  # every folder counts as large
    ds = load_dataset(folder, "train", R)
    assert isinstance(ds.images, FolderRows)
    assert torch.equal(ds.images[:], load_dataset(folder, "train", R, lazy=False).images)


def test_a_corrupt_file_is_named_from_the_worker(folder, tmp_path):
    import shutil

    root = tmp_path / "imgs"
    shutil.copytree(folder, root)
    (root / "bee" / "9.png").write_bytes(b"not a png")
    ds = load_image_folder(root, R, lazy=True, num_workers=2)
    with pytest.raises(ValueError, match="9.png"):
        torch.cat(list(ds.images.split(4)))
