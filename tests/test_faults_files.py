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
