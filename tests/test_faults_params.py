"""Fault catalogue, parameters refused late (issue 12, item 9), in-process: each check is the exported function the run
notebooks call in their first cell (tests/test_run_latent.py drives the same checks through papermill)."""
import json
from pathlib import Path

import pytest
import torch

from drifting.mae import check_encoder_spec
from drifting.tokenizer import check_vae_spec
from drifting.runs import check_dataset_arg, check_latent_run as check_run_params
from drifting.train import ConfigMismatch, check_resume_params
from _faults import audit, quick_run, snapshot, tiny_repo
from _tiny_trainer import tiny_trainer


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tiny_repo(tmp_path_factory.mktemp("repo"))


@pytest.mark.parametrize("keep", [-1, 0, "2", 1.5, True])
def test_keep_checkpoints_refused_before_work(keep):
    with pytest.raises(ValueError, match="keep_checkpoints must be None"):
        check_run_params("tiny", 3, "mnist5k", [1], keep_checkpoints=keep)


def test_keep_checkpoints_minus_one_deletes_nothing(repo, tmp_path):
    "`-1` used to delete every step file; now fit refuses it and the files stay byte-identical."
    t = tiny_trainer(); run = quick_run(repo, tmp_path / "runs"); t.fit(2, run=run, ckpt_every=1, progress=False)
    before = snapshot(run.dir / "artifacts")
    with pytest.raises(ValueError, match="keep_checkpoints must be None"):
        t.fit(4, run=run, ckpt_every=1, keep_checkpoints=-1, progress=False)
    assert snapshot(run.dir / "artifacts") == before and t.step_count == 2
    run.finish(); audit(run.dir)


@pytest.mark.parametrize("flag", ["False", "no", 0, None])
def test_allow_config_change_must_be_a_bool(flag):
    "`-r allow_config_change False` is the string 'False' (truthy): refused, with the right spelling in the message."
    with pytest.raises(ValueError, match="allow_config_change must be True or False.*-p allow_config_change False"):
        check_run_params("tiny", 3, "mnist5k", [1], allow_changes=flag)


def test_resume_with_other_inputs_refused_from_the_record(repo, tmp_path):
    "A resume from a run with another dataset / VAE / encoder is refused by reading its repro.json (no VAE/MAE work)."
    prev = dict(dataset="mnist5k", vae="builtin", feature_encoder="builtin", mae_preset="small", mae_steps=300)
    run = quick_run(repo, tmp_path / "runs", dict(prev, seed=0))
    run.save_checkpoint({"w": torch.ones(2), "step": 1}, step=1); run.finish(); before = snapshot(run.dir)
    assert check_resume_params(run.dir, **prev) == {}
    with pytest.raises(ConfigMismatch, match=r"dataset: 'mnist5k' \(checkpoint\) -> 'digits8' \(now\)"):
        check_resume_params(run.dir, **dict(prev, dataset="digits8"))
    with pytest.raises(ConfigMismatch, match="vae: 'builtin'"):
        check_resume_params(run.dir / "artifacts/checkpoints/last.pt", **dict(prev, vae="/my/vae"))
    assert check_resume_params(run.dir, True, **dict(prev, mae_preset="tiny")) == {"mae_preset": ("small", "tiny")}
    assert snapshot(run.dir) == before


@pytest.mark.parametrize("fn,args,msg", [
    (check_vae_spec, ("/no/such/vae",), "not 'builtin', not an existing directory"),
    (check_vae_spec, ("someone/unpinned-vae",), "no pinned revision"),
    (check_encoder_spec, ("/no/such/encoder", "small"), "is not None, 'builtin' or an encoder export"),
    (check_encoder_spec, ("builtin", "huge"), "unknown mae_preset 'huge'"),
    (check_dataset_arg, ("/no/such/images",), "neither a built-in"),
])
def test_bad_specs_refused_without_loading(fn, args, msg):
    with pytest.raises((ValueError, FileNotFoundError), match=msg): fn(*args)


def test_encoder_folder_of_another_kind(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"format": 1, "kind": "something.else"})); (tmp_path / "encoder.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a drifting.mae.ResNetEncoder export"): check_encoder_spec(tmp_path)
