"""Watching a run (#25 item 4, #26 item 5): the drift diagnostics leave the step's bits alone and tell a healthy
configuration from an attraction-only one; a run with `sample_every`, `eval_every` and a tracker leaves sample grids
in its bundle and its numbers in the W&B offline files and an MLflow file store."""
import dataclasses, json

import pytest
import torch

from drifting.data import ImageDataset
from drifting.evaluate import training_watch
from drifting.features import FeatureSpace
from drifting.mae import ResNetEncoder
from drifting.metrics import FeatureNet
from drifting.provenance import start_run
from drifting.streams import DataStream
from drifting.train import Trainer, train_config
from drifting.writers import Tracker


@pytest.fixture(autouse=True)
def one_thread():
    "Bit-equality is claimed for one thread and these shapes only (the kernels' sums depend on both)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data():
    g = torch.Generator().manual_seed(123)
    return ImageDataset(torch.randn(200, 2, 8, 8, generator=g), torch.arange(200) % 5, list("abcde"), "rand", "fp-rand")


def _tiny(**kw) -> Trainer:
    "The tiny problem of the train chapter: 5 classes of random 2×8×8 'latents', the tiny generator, a random encoder."
    ds = _data()
    torch.manual_seed(7)
    enc = ResNetEncoder(in_channels=2, width=8, blocks=(1, 1, 1, 1))
    cfg = train_config("tiny", **kw)
    return Trainer(cfg, DataStream(ds, cfg.push_per_step, cfg.seed), FeatureSpace(enc, every_k_block=1), "cpu")


def _attraction_only() -> Trainer:
    "A trainer whose loss is attraction-only (Tab. 1, `DriftOptions(repulsion=0)`): the config's `repulsion` knob."
    return _tiny(repulsion=0.0)


def test_diagnostics_leave_the_step_bits_alone():
    a, b = _tiny(grad_accum=2), _tiny(grad_accum=2)
    for _ in range(3):
        ma, mb = a.step(), b.step(diagnostics=True)
        assert ma["loss"] == mb["loss"] and ma["v2"] == mb["v2"] and ma["grad_norm"] == mb["grad_norm"]
        for p, q in zip(a.gen.parameters(), b.gen.parameters()):
            assert torch.equal(p.grad, q.grad) and torch.equal(p, q)
    assert "diag" not in ma and "diag" in mb
    sa, sb = a.state_dict(), b.state_dict()
    assert torch.equal(sa["rng"]["run"], sb["rng"]["run"])
    for s, t in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert all(torch.equal(s[k], t[k]) for k in s)
    assert all(torch.equal(sa["ema"][k], sb["ema"][k]) for k in sa["ema"])


def test_attraction_only_shows_no_repulsion():
    healthy = _tiny()
    for _ in range(2):
        mh = healthy.step(diagnostics=True)
    broken = _attraction_only()
    for _ in range(2):
        mb = broken.step(diagnostics=True)
    assert mb["loss"] != mh["loss"]  # the loss itself changed: this is another objective, not only another log
    for grp in mh["diag"]["groups"]:
        h, b = mh["diag"]["groups"][grp], mb["diag"]["groups"][grp]
        assert min(h["repulsion"]) > 0 and min(h["attraction"]) > 0, (grp, h)
        assert b["repulsion"] == [0.0] * len(b["repulsion"]) and min(b["attraction"]) > 0, (grp, b)


class _Flat(torch.nn.Module):  # a fixed random feature map of 2×8×8 images, for a classifier-shaped metric network
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(128, 4, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return x.flatten(1) @ self.w


def _watched_fit(tmp_path, tracker, steps=4):
    run = start_run("watch", {"test": tracker}, runs_dir=tmp_path / "runs", smoke=False)
    t = _tiny()
    net = FeatureNet(_Flat(), "toy", dict(resize="none"), 4, head=torch.nn.Linear(4, 5))
    ds = _data()
    ref = dataclasses.replace(ds, images=ds.images.clamp(-1, 1))  # the metric's reference: images in [-1, 1]
    watch = training_watch(None, net, ref, ref, per_class=2, eval_per_class=4)
    t.fit(steps, run=run, progress=False, log_every=2, diag_every=2, watch=watch, sample_every=2, eval_every=4,
          tracker=tracker)
    run.finish(steps=t.step_count)
    recs = [json.loads(l) for l in (run.dir / "logs" / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4] and all("diag" in r for r in recs)
    assert "eval" not in recs[0] and 0 <= recs[1]["eval"]["class_accuracy"] <= 1 and recs[1]["eval"]["n"] == 20
    assert sorted(p.name for p in (run.dir / "samples").iterdir()) == ["step_2.png", "step_4.png"]
    return run.dir, recs


def test_mlflow_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the [trackers] extra (in the lock) is not installed here")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default: a file store inside the bundle
    bundle, recs = _watched_fit(tmp_path, "mlflow")
    (run_dir,) = [p.parent for p in (bundle / "mlruns").glob("*/*/metrics")]
    metric = lambda name: [l.split() for l in (run_dir / "metrics" / name).read_text().splitlines()]  # ts value step
    assert [(float(v), int(s)) for _, v, s in metric("loss")] == [(r["loss"], r["step"]) for r in recs]
    rep = metric("diag/groups/location/repulsion/tau0.02")
    assert [int(s) for *_, s in rep] == [2, 4] and all(float(v) > 0 for _, v, _ in rep)
    assert float(metric("eval/class_accuracy")[0][1]) == recs[1]["eval"]["class_accuracy"]
    assert (run_dir / "params" / "n_pos").read_text() == "4"
    assert sorted(p.name for p in (run_dir / "artifacts" / "samples").iterdir()) == ["step_2.png", "step_4.png"]
    from mlflow.entities import RunStatus

    assert f"status: {RunStatus.from_string('FINISHED')}" in (run_dir / "meta.yaml").read_text()


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the [trackers] extra (in the lock) is not installed here")
    for k, v in dict(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONFIG_DIR=tmp_path / "cfg",
                     WANDB_CACHE_DIR=tmp_path / "cache", WANDB_DATA_DIR=tmp_path / "data").items():
        monkeypatch.setenv(k, str(v))
    bundle, recs = _watched_fit(tmp_path, "wandb")
    (log,) = (bundle / "wandb").glob("offline-run-*/run-*.wandb")  # the run's records, for `wandb sync`
    data = log.read_bytes()
    for name in ("loss", "diag/groups/location/repulsion/tau0.02", "eval/class_accuracy", "samples"):
        assert name.encode() in data, name
    assert repr(recs[1]["loss"]).encode() in data  # the logged value itself (W&B stores numbers as JSON text)


def test_tracker_params_are_redacted(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the [trackers] extra (in the lock) is not installed here")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bundle = tmp_path / "runs" / "latent" / "b"
    bundle.mkdir(parents=True)
    t = Tracker("mlflow", bundle, config=dict(n_pos=4, hf_token="hf_notarealsecret12345"))
    t.close(True)
    (params,) = list((bundle / "mlruns").glob("*/*/params"))
    assert (params / "n_pos").read_text() == "4"
    assert "hf_notarealsecret12345" not in (params / "hf_token").read_text()  # redacted as in the bundle's files
