"""The evaluation at larger counts than the notebooks check (issue 24, items 1 and 2): precision/recall by blocked
matrix products against the direct distances, the streamed sweep against the in-memory one over many shards, the
`arr_0` export read back by numpy, and FID against imported statistics against the same statistics computed here."""
import numpy as np
import pytest
import torch

import drifting.metrics as metrics
from drifting.data import ImageDataset
from drifting.evaluate import METRICS, feature_metrics, sweep_alpha
from drifting.generator import build_generator
from drifting.metrics import (FeatureNet, FeatureStats, compute_fid, export_ref_stats, extract_features, knn_radii,
                              precision_recall, read_ref_stats, ref_stats_for)
from drifting.sample import class_labels
from drifting.stream import export_arr0, shard_writer, stream_sweep

U = 2.0**-53  # float64 unit roundoff


def _direct(a, b):  # [N, D], [M, D] -> [N, M] Euclidean distances from the differences (no matrix products)
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")


def test_precision_recall_by_matrix_products_equals_the_direct_distances(monkeypatch):
    "Many blocks (KNN_BLOCK shrunk): the radii agree within the product form's rounding bound, and P/R exactly."
    g = torch.Generator().manual_seed(0)
    d = 32
    real = torch.randn(700, d, generator=g, dtype=torch.float64)
    gen = torch.randn(900, d, generator=g, dtype=torch.float64) * 1.1 + 0.1
    monkeypatch.setattr(metrics, "KNN_BLOCK", 5000)  # blocks of 5-7 rows
    radii = knn_radii(real, 3)
    ref = _direct(real, real).sort(1).values[:, 3]
    # |d²_mm - d²| <= 2 γ_{D+2} (|a|² + |b|²); a distance moves by at most that over (d_mm + d)
    norms = (real * real).sum(1)
    gamma = (d + 2) * U / (1 - (d + 2) * U)
    bound = 2 * gamma * (norms + norms.max()) / (radii + ref)
    assert ((radii - ref).abs() <= bound).all()
    pr = precision_recall(real, gen)
    dg, rg = _direct(gen, real), _direct(gen, gen).sort(1).values[:, 3]
    margin = min(float((dg - ref[None]).abs().min()), float((dg.T - rg[None]).abs().min()))
    assert margin > 1e-9  # far above the rounding bound (~1e-13 here): no point can change sides
    assert pr["precision"] == float((dg <= ref[None]).any(1).double().mean())
    assert pr["recall"] == float((dg.T <= rg[None]).any(1).double().mean())


class _Flat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(64, 6, generator=torch.Generator().manual_seed(1)))

    def forward(self, x):
        return torch.tanh(x.flatten(1) @ self.w)


def test_streamed_sweep_equals_the_in_memory_sweep_over_many_shards(tmp_path):
    "300 samples per α in shards of 64 (one thread, batches that divide the chunks): the same rows, the same bytes."
    torch.set_num_threads(1)
    gen = build_generator("tiny", in_channels=1, input_size=8, num_classes=5).eval()
    net = FeatureNet(_Flat(), "toy", dict(resize="none"), 6, head=torch.nn.Linear(6, 5), batch_size=32)
    ds = ImageDataset(torch.rand(200, 1, 8, 8) * 2 - 1, torch.arange(200) % 5, list("abcde"), "img", "fp")
    rf = extract_features(net, ds.images)
    kw = dict(classifier=net, train=ds, heldout=ds, progress=False, metric_net=net, ref_feats=rf,
              ref_stats=FeatureStats.from_features(rf, net), seed=2)
    rows0, images, _ = sweep_alpha(gen, [1.0, 3.0], 60, **kw)
    rows1, shards = stream_sweep(gen, [1.0, 3.0], 60, shard_writer(tmp_path / "s"), chunk=64, **kw)
    for r0, r1 in zip(rows0, rows1):
        assert set(r0) == set(r1)
        for k, v in r0.items():
            assert (abs(r1[k] - v) <= 1e-9 * max(abs(v), 1e-12)) if isinstance(v, float) else r1[k] == v, (k, v, r1[k])
    s = shards[3.0]
    assert s.sizes == [64, 64, 64, 64, 44] and len(s) == 300
    a0 = np.load(export_arr0(s, tmp_path / "alpha_3.npz"))  # numpy reads the streamed .npy entries as one array
    u = ((images[3.0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert a0["arr_0"].dtype == np.uint8 and a0["arr_0"].shape == (300, 8, 8, 1) and (a0["arr_0"] == u).all()
    assert (a0["arr_1"] == class_labels(5, 60).numpy()).all()


def test_fid_against_imported_statistics_equals_fid_against_the_same_statistics_computed_here(tmp_path):
    "Export in ADM's layout, import with a stated protocol: FID within 1e-6 relative (float64 kept: in fact equal)."
    g = torch.Generator().manual_seed(3)
    net = FeatureNet(torch.nn.Flatten(), "flat", dict(resize="none"), 12)
    real, fake = torch.randn(400, 12, generator=g), torch.randn(300, 12, generator=g) * 1.2 + 0.3
    here = FeatureStats.from_features(real, net)
    rec = read_ref_stats(export_ref_stats(here, tmp_path / "ref_stats.npz"), "400 normal draws, flat features")
    imported = ref_stats_for(rec, net)
    a, b = compute_fid(fake, here, net)["fid"], compute_fid(fake, imported, net)["fid"]
    assert abs(a - b) <= 1e-6 * abs(a)
    m = feature_metrics(net, None, real, imported, feats=fake, metrics=["fid"])
    assert m["fid"] == b and set(m) == {"metric_net", "n", "fid"}


def test_unknown_metric_names_the_registry():
    with pytest.raises(ValueError, match="unknown metric"):
        feature_metrics(None, None, None, None, feats=torch.zeros(2, 2), metrics=["fid", "clip"])
    assert list(METRICS) == ["fid", "kid", "inception_score", "precision_recall"]
