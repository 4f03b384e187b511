"""MAE end to end: the run notebook through papermill with tiny parameters (latents from a quick built-in VAE, and
pixels), its encoder export reloaded bit-exactly, bad parameters failing before any work."""
import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import torch

from drifting.builtin_vae import BuiltinRecipe, builtin_key, builtin_vae
from drifting.bundle import validate_bundle
from drifting.mae import load_encoder, mae_config, save_encoder, MAE

NB = Path(__file__).resolve().parents[1] / "nbs" / "run_mae.ipynb"
QUICK = BuiltinRecipe(steps=3, batch_size=16, scale_items=256, eval_items=64)  # plumbing only: seconds, not a model
TINY = dict(preset="tiny", steps=4, batch_size=8, warmup=2, finetune_last_steps=2, finetune_warmup=1,
            num_threads=1, progress=False)


@pytest.fixture(scope="module")
def quick_vae(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    builtin_vae(root, recipe=QUICK, progress=False)
    return root / builtin_key(recipe=QUICK)


def run(tmp_path, **params):
    out_dir = tmp_path / "run"
    pm.execute_notebook(str(NB), str(tmp_path / "executed.ipynb"),
                        parameters=dict(TINY, out_dir=str(out_dir), runs_dir=str(tmp_path / "runs"), **params),
                        cwd=str(tmp_path), progress_bar=False)
    return out_dir


def test_parameters_cell_is_tagged():
    nb = nbformat.read(NB, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell must carry the papermill 'parameters' tag"
    assert 'preset = "small"' in code[0].source and "steps = 1000" in code[0].source


def test_run_mae_on_latents(tmp_path, quick_vae):
    out_dir = run(tmp_path, vae=str(quick_vae), seed=3)
    assert sorted(p.name for p in out_dir.iterdir()) == ["encoder", "loss.png", "metrics.json"]
    png = (out_dir / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 200_000
    m = json.loads((out_dir / "metrics.json").read_text())
    # the -p values reached the run (defaults: small, 1000 steps, batch 64, seed 0)
    assert (m["preset"], m["steps"], m["batch_size"], m["seed"], m["width"]) == ("tiny", 4, 8, 3, 8)
    assert m["space"] == "latents" and m["input_shape"] == [4, 8, 8]  # the built-in VAE: 1×32×32 -> 4×8×8
    assert m["tokenizer"]["encoder"].startswith("local:")
    assert m["lambda_cls_per_step"] == [0.0, 0.0, 0.0, 0.1]  # fine-tune over the last 2 steps, ramp over 1
    assert len(m["loss_per_step"]) == 4 and m["final_loss"] == m["loss_per_step"][-1]
    assert set(m["heldout_ema"]) == {"recon_loss", "accuracy", "accuracy_nomask"}
    (bundle,) = (tmp_path / "runs" / "mae").iterdir()  # issue 12: run_mae leaves a run bundle too
    man = json.loads((bundle / "run_manifest.json").read_text())
    assert man["status"] == "completed" and validate_bundle(bundle) == []
    assert json.loads((bundle / "metrics.json").read_text())["scalars"]["final_loss"] == m["final_loss"]
    enc = load_encoder(out_dir / "encoder", expect=mae_config("tiny", in_channels=4, num_classes=10))
    assert enc.info["weights"] == "ema" and enc.info["steps"] == 4
    acts = enc.get_activations(torch.zeros(2, 4, 8, 8))
    assert list(acts) == ["conv1", "layer1", "layer2", "layer3", "layer4"]  # tiny: one block per stage


def test_run_mae_on_pixels(tmp_path):
    out_dir = run(tmp_path, vae=None, steps=2, finetune_last_steps=0, input_patch=4)  # the pixel MAE's input_patch_size
    m = json.loads((out_dir / "metrics.json").read_text())
    assert m["space"] == "pixels" and m["input_shape"] == [1, 32, 32] and m["tokenizer"] is None and m["input_patch"] == 4
    assert m["lambda_cls_per_step"] == [0.0, 0.0]
    enc = load_encoder(out_dir / "encoder", expect=dict(in_channels=1, width=8, input_patch=4))
    assert enc.get_activations(torch.zeros(2, 1, 32, 32))["conv1"].shape == (2, 8, 8, 8)  # 32² pixels as an 8² grid


@pytest.mark.parametrize("params, msg", [(dict(preset="resnet50"), "unknown MAE preset"),
                                         (dict(ema_decay=1.5), "ema_decay"),
                                         (dict(recipe="pixel-256"), "unknown MAE recipe 'pixel-256'")])
def test_run_mae_bad_parameters_fail_before_work(tmp_path, params, msg):
    with pytest.raises(pm.PapermillExecutionError, match=msg):
        run(tmp_path, vae=None, **params)
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_encoder_export_roundtrip_and_refusal(tmp_path):
    torch.manual_seed(0)
    mae = MAE(mae_config("tiny", blocks=(3, 4, 6, 3)))
    save_encoder(mae, tmp_path / "enc")
    enc = load_encoder(tmp_path / "enc", expect=mae.cfg)
    a, b = mae.encoder.state_dict(), enc.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"blocks=\[3, 4, 6, 3\] \(expected \[1, 1, 1, 1\]\)"):
        load_encoder(tmp_path / "enc", expect=mae_config("tiny"))
