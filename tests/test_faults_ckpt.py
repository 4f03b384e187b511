"""Fault catalogue, checkpoints and non-finite values (issue 12, items 7-8): bit flips, truncation, a lost last.pt,
NaN/inf in the config, the gradients and the weights. A bad checkpoint is never trusted, a non-finite one is never
written, and what was saved before is byte-identical afterwards."""
import json, math, os, shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from drifting.bundle import validate_bundle
from drifting.provenance import CheckpointError, checkpoint_file, load_checkpoint, open_checkpoint
from drifting.runs import check_latent_run as check_run_params
from drifting.train import train_config
from _faults import audit, events, manifest, quick_run, snapshot, tiny_repo
from _tiny_trainer import tiny_trainer


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tiny_repo(tmp_path_factory.mktemp("repo"))


def _three_checkpoints(repo, runs):
    run = quick_run(repo, runs)
    for s in (1, 2, 3): run.save_checkpoint({"w": torch.full((64,), float(s)), "step": s}, step=s)
    return run.finish()


def _flip_byte(p: Path, at: int = -100):
    b = bytearray(p.read_bytes()); b[at] ^= 0x01; p.write_bytes(bytes(b))


def test_last_pt_is_its_own_file(repo, tmp_path):
    "item 8: last.pt is a copy (not a hard link), so one bit flip cannot corrupt both."
    run = _three_checkpoints(repo, tmp_path / "runs"); ck = run.dir / "artifacts/checkpoints"
    assert os.stat(ck / "last.pt").st_nlink == 1 and os.stat(ck / "last.pt").st_ino != os.stat(ck / "step_3.pt").st_ino
    assert (ck / "last.pt").read_bytes() == (ck / "step_3.pt").read_bytes()
    assert events(run.dir)[-2]["copies"] == ["artifacts/checkpoints/last.pt"]


@pytest.mark.parametrize("damage", ["bitflip", "truncate", "delete"])
def test_bad_last_pt_falls_back_to_newest_good_step(repo, tmp_path, capsys, damage):
    "item 8: a flipped, truncated or lost last.pt: the newest good step_N.pt is used and the message says so."
    run = _three_checkpoints(repo, tmp_path / "runs"); ck = run.dir / "artifacts/checkpoints"
    keep = {n: (ck / n).read_bytes() for n in ("step_1.pt", "step_2.pt", "step_3.pt")}
    last = ck / "last.pt"
    if damage == "bitflip": _flip_byte(last)
    elif damage == "truncate": last.write_bytes(last.read_bytes()[:200])
    else: last.unlink()
    path, sd = open_checkpoint(run.dir)
    assert path.name == "step_3.pt" and sd["step"] == 3 and torch.equal(sd["w"], torch.full((64,), 3.0))
    err = capsys.readouterr().err
    assert "using the newest good checkpoint step_3.pt instead" in err
    if damage != "delete": assert ("does not match the sha256" in err) if damage == "bitflip" else ("last.pt" in err)
    assert {n: (ck / n).read_bytes() for n in keep} == keep  # the step files are untouched
    probs = validate_bundle(run.dir)
    assert probs and "artifacts/checkpoints/last.pt" in probs[0], probs  # validate names the bad file
    audit(run.dir)


def test_every_checkpoint_bad_gives_a_clear_error(repo, tmp_path):
    run = _three_checkpoints(repo, tmp_path / "runs"); ck = run.dir / "artifacts/checkpoints"
    for p in ck.glob("*.pt"): _flip_byte(p)
    with pytest.raises(CheckpointError, match="no good checkpoint in") as e: load_checkpoint(run.dir)
    assert "step_1.pt" in str(e.value) and "step_3.pt" in str(e.value)


def test_truncated_file_outside_a_bundle(tmp_path):
    p = tmp_path / "model.pt"; torch.save({"w": torch.ones(1000)}, p); p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint"): load_checkpoint(p)
    with pytest.raises(CheckpointError, match="not found"): load_checkpoint(tmp_path / "nope.pt")


def test_resume_from_a_corrupted_bundle_records_the_file_used(repo, tmp_path):
    run = _three_checkpoints(repo, tmp_path / "runs"); _flip_byte(run.dir / "artifacts/checkpoints/last.pt")
    b = quick_run(repo, tmp_path / "runs", resume_from=run.dir).finish()
    ev = [e for e in events(b.dir) if e["event"] == "resume"][0]
    assert ev["from"].endswith("step_3.pt") and ev["step"] == 3 and b.resume_state["step"] == 3
    assert validate_bundle(b.dir) == []


def test_check_run_params_survives_a_bad_last_pt(repo, tmp_path, capsys):
    "A resume's quick config check reads the newest good step file, not a raw torch error on a broken last.pt."
    t = tiny_trainer(); run = quick_run(repo, tmp_path / "runs")
    t.fit(2, run=run, ckpt_every=1, progress=False); run.finish()
    (run.dir / "artifacts/checkpoints/last.pt").write_bytes(b"PK\x03\x04 not a zip")
    assert checkpoint_file(run.dir).name == "step_2.pt"
    with pytest.raises(ValueError, match="step 2 ≥ steps=2"):  # it reached the step check: the config was read
        check_run_params("tiny", 2, "mnist5k", [1], resume=run.dir, feature_encoder=t.cfg.feature_encoder,
                         every_k_block=t.cfg.every_k_block)  # the tiny trainer's own config
    assert "using the newest good checkpoint step_2.pt" in capsys.readouterr().err


def test_nonfinite_checkpoint_is_never_written(repo, tmp_path):
    "item 7: NaN weights are refused; the earlier checkpoint files and the event log are unchanged."
    run = quick_run(repo, tmp_path / "runs"); run.save_checkpoint({"w": torch.ones(4), "step": 1}, step=1)
    before = snapshot(run.dir / "artifacts"); n_ev = len(events(run.dir))
    with pytest.raises(FloatingPointError, match=r"NaN/inf values at state\.model\.w"):
        run.save_checkpoint({"model": {"w": torch.tensor([1.0, float("nan")])}, "step": 2}, step=2)
    assert snapshot(run.dir / "artifacts") == before and len(events(run.dir)) == n_ev
    run.finish(); assert validate_bundle(run.dir) == []


def test_nan_gradient_stops_before_the_optimiser_step(repo, tmp_path):
    "item 7: a NaN gradient is caught by the clip (error_if_nonfinite) before opt.step: weights and checkpoints unchanged."
    t = tiny_trainer(); run = quick_run(repo, tmp_path / "runs")
    t.fit(2, run=run, ckpt_every=1, progress=False)
    w0 = {k: v.clone() for k, v in t.gen.state_dict().items()}; before = snapshot(run.dir / "artifacts")
    p = next(t.gen.parameters()); h = p.register_hook(lambda g: g * float("nan"))
    with pytest.raises(FloatingPointError, match="gradient norm is NaN/inf at step 2: the optimiser step was not taken"):
        t.fit(4, run=run, ckpt_every=1, progress=False)
    h.remove()
    assert all(torch.equal(w0[k], v) for k, v in t.gen.state_dict().items())
    assert snapshot(run.dir / "artifacts") == before
    run.fail("nan"); audit(run.dir); assert validate_bundle(run.dir) == []


def test_trainer_save_refuses_nan_weights(tmp_path):
    t = tiny_trainer(); t.save(tmp_path / "a.pt"); good = (tmp_path / "a.pt").read_bytes()
    with torch.no_grad(): next(t.gen.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="refusing to write a checkpoint"): t.save(tmp_path / "a.pt")
    assert (tmp_path / "a.pt").read_bytes() == good


@pytest.mark.parametrize("field,value", [("lr", math.inf), ("alpha_max", math.inf), ("cfg_k", math.nan),
                                         ("taus", (0.02, math.inf)), ("clip", math.nan), ("weight_decay", math.inf)])
def test_nonfinite_config_refused_up_front(field, value):
    "item 7: lr=inf, an inf α bound, a τ of inf… are refused when the config is built, before any step."
    with pytest.raises(ValueError, match=f"{field if field != 'taus' else 'betas and taus'} must be (a )?finite"):
        train_config("tiny", **{field: value})


def test_validate_checks_prediction_and_notebook_hashes(repo, tmp_path):
    "item 8: validate checks every recorded hash: predictions and the attached notebook too."
    run = quick_run(repo, tmp_path / "runs")
    run.save_predictions(np.zeros((2, 4, 4, 1), np.uint8), [0, 1], "s0"); run.finish()
    nb = {"cells": [{"cell_type": "markdown", "id": "a", "metadata": {}, "source": [f"drifting: run bundle {run.dir}"]}],
          "metadata": {"papermill": {"parameters": {"bundle": str(run.dir)}}}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "o.ipynb").write_text(json.dumps(nb))
    from drifting.provenance import attach_notebook
    attach_notebook(run.dir, tmp_path / "o.ipynb"); assert validate_bundle(run.dir) == []
    f = run.dir / "artifacts/predictions/samples_s0.npz"; z = dict(np.load(f)); z["images"][0, 0, 0, 0] = 255
    np.savez(f, **z)
    (run.dir / "notebook.ipynb").write_text((run.dir / "notebook.ipynb").read_text().replace("markdown", "raw"))
    probs = validate_bundle(run.dir)
    assert any("samples_s0.npz: sha256 does not match" in p for p in probs) and any("notebook.ipynb: sha256" in p for p in probs)


def test_validate_survives_an_unreadable_predictions_file(repo, tmp_path):
    run = quick_run(repo, tmp_path / "runs"); run.save_predictions(np.zeros((2, 4, 4, 1), np.uint8), [0, 1], "s0"); run.finish()
    (run.dir / "artifacts/predictions/samples_s0.npz").write_bytes(b"x" * 10)
    probs = validate_bundle(run.dir)
    assert "samples_s0.npz: cannot be read as .npz" in " ".join(probs) and "sha256 does not match" in " ".join(probs)
