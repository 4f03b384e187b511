"""The pixel path end to end (issue 16): `run_latent` with `-p vae None` through papermill on tiny parameters, with the
pixel MAE and a tiny randomly initialised ConvNeXt-V2 in the feature space; resuming its step-2 checkpoint gives the
uninterrupted run's weights; and the augmented pixel stream (`aug='rrc'`, the release's `use_aug`) resumes exactly."""
import io, json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

NB = Path(__file__).resolve().parents[1] / "nbs" / "run_latent.ipynb"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification
    root = tmp_path_factory.mktemp("pixel")
    torch.manual_seed(0)
    cnx = ConvNextV2ForImageClassification(ConvNextV2Config(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_labels=3))
    cnx.save_pretrained(root / "convnext")
    tiny = dict(vae="None", preset="tiny", steps=4, ckpt_every=2, mae_preset="pixel-small", mae_steps=2,
                convnext=str(root / "convnext"), alpha_eval="1,2", eval_per_class=3, fid_n=0, num_threads=1,
                progress=False, runs_dir=str(root / "runs"), project="pixel")
    return dict(root=root, tiny=tiny, runs=root / "runs" / "pixel")


def _papermill(env, out, **params):
    p = dict(env["tiny"], **params)
    args = [a for k, v in p.items() for a in ("-p", k, str(v))]  # `-p vae None` is papermill's None
    e = dict(os.environ, DRIFTING_CACHE=str(env["root"] / "cache"))
    return subprocess.run([str(Path(sys.executable).parent / "papermill"), str(NB), str(out), *args, "--no-progress-bar"],
                          cwd=env["root"], env=e, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def first(env):
    r = _papermill(env, env["root"] / "first.ipynb")
    assert r.returncode == 0, r.stderr[-4000:]
    (bundle,) = sorted(env["runs"].iterdir())
    return bundle, r


def test_pixel_run_bundle(first):
    from drifting.bundle import validate_bundle
    bundle, r = first
    validate_bundle(bundle)
    assert json.loads((bundle / "run_manifest.json").read_text())["status"] == "completed"
    state = torch.load(bundle / "artifacts" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4 and state["generator_config"]["in_channels"] == 1 and state["generator_config"]["input_size"] == 32
    assert state["config"]["convnext"].endswith("convnext") and state["config"]["mae_preset"] == "pixel-small"
    rec = json.loads((bundle / "logs" / "steps.jsonl").read_text().splitlines()[0])
    keys = set(rec["v2"])  # every key of the pixel space took part in the loss: MAE, ConvNeXt, raw
    assert {"global", "norm_x", "conv1", "layer1_blk2_mean_4", "convenxt_stage_1", "convenxt_stage_0_mean", "global_mean", "global_std"} <= keys
    assert len(keys) == 9 * 7 - 2 * 2 - 2 * 4 + 1 + 13 + 1
    ev = json.loads((bundle / "artifacts" / "eval_alpha.json").read_text())  # the same metrics as a latent run
    assert [row["alpha"] for row in ev["rows"]] == [1.0, 2.0] and ev["classifier"]
    assert all(0 <= row["class_accuracy"] <= 1 and row["frechet"] > 0 for row in ev["rows"])
    scal = json.loads((bundle / "metrics.json").read_text())["scalars"]
    assert {"best_class_accuracy", "best_frechet", "best_frechet_real_vs_real"} <= set(scal)
    out = (bundle / "notebook.ipynb").read_text() if (bundle / "notebook.ipynb").exists() else ""
    out += (bundle.parents[2] / "first.ipynb").read_text()  # the executed notebook says which networks define the features
    assert "pixel feature space: pixel MAE 'pixel-small'" in out and "ConvNeXt-V2 from" in out


def test_pixel_resume_is_exact(env, first):
    bundle, _ = first
    r = _papermill(env, env["root"] / "resumed.ipynb", resume=str(bundle / "artifacts" / "checkpoints" / "step_2.pt"))
    assert r.returncode == 0, r.stderr[-4000:]
    (new,) = [b for b in env["runs"].iterdir() if b != bundle]
    a = torch.load(bundle / "artifacts" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(new / "artifacts" / "checkpoints" / "last.pt", weights_only=True)
    assert b["step"] == 4
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_run_eval_on_the_pixel_run(env, first):
    "run_eval reads a pixel bundle as a generator of images (no decoder) and measures it like a latent one."
    bundle, _ = first
    out = env["root"] / "eval.ipynb"
    params = dict(checkpoint=str(bundle), alphas="1", n_per_class=3, metric_net="auto", num_threads=1, progress=False,
                  runs_dir=str(env["root"] / "runs"))
    args = [a for k, v in params.items() for a in ("-p", k, str(v))]
    r = subprocess.run([str(Path(sys.executable).parent / "papermill"), str(NB.parent / "run_eval.ipynb"), str(out), *args,
                        "--no-progress-bar"], cwd=env["root"], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, DRIFTING_CACHE=str(env["root"] / "cache")))
    assert r.returncode == 0, r.stderr[-4000:]
    (ev_dir,) = sorted((env["root"] / "runs" / "eval").iterdir())
    ev = json.loads((ev_dir / "artifacts" / "eval.json").read_text())
    assert [row["alpha"] for row in ev["rows"]] == [1.0] and {"fid", "class_accuracy", "precision"} <= set(ev["rows"][0])


def test_augmented_pixel_stream_resumes_exactly(tmp_path, monkeypatch):
    "aug='rrc' (B/16, L/16): 4 steps straight equal 2 steps, a checkpoint through bytes, then 2 more."
    from drifting.data import ImageDataset
    from drifting.feature_nets import build_features
    from drifting.streams import data_stream
    from drifting.train import Trainer, train_config
    monkeypatch.setenv("DRIFTING_CACHE", str(tmp_path))
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    ds = ImageDataset(torch.rand(40, 3, 16, 16, generator=g) * 2 - 1, torch.arange(40) % 4, list("abcd"), "rgb", "fp-rgb")
    cfg = train_config("tiny", aug="rrc", flip=True, mae_preset="pixel-small", mae_steps=2, n_c=2)
    fs, _ = build_features(cfg, ds, "cpu", progress=False)
    def trainer(): return Trainer(cfg, data_stream(cfg, ds), fs, "cpu")
    a = trainer(); a.fit(4, progress=False)
    b = trainer(); b.fit(2, progress=False)
    buf = io.BytesIO(); torch.save(b.state_dict(), buf); buf.seek(0)
    c = trainer(); c.load_state_dict(torch.load(buf, weights_only=True)); c.fit(4, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.gen.state_dict().values(), c.gen.state_dict().values()))
    assert all(torch.equal(p, q) for p, q in zip(a.ema.state_dict().values(), c.ema.state_dict().values()))


FIX = Path(__file__).resolve().parent / "fixtures" / "official" / "models"


def _close(ours: torch.Tensor, ref, tol: float = 1e-4) -> bool:
    ref = torch.as_tensor(ref, dtype=torch.float32)
    return ours.shape == ref.shape and float((ours - ref).abs().max()) <= tol * float(ref.square().mean().sqrt()) + 1e-7


def test_pixel_feature_space_reproduces_the_official_activations(tmp_path, monkeypatch):
    """The pixel space built by a run (`build_features`: an exported MAE encoder + a ConvNeXt folder + global) gives the
    official `get_activations` of both networks on the parity fixtures made by the authors' JAX code."""
    import numpy as np
    from drifting.data import ImageDataset
    from drifting.mae import save_encoder
    from drifting.official import IMAGENET_MEAN, IMAGENET_STD, load_official_mae
    from drifting.feature_nets import build_features
    from drifting.train import train_config
    monkeypatch.setenv("DRIFTING_CACHE", str(tmp_path))
    mae_dir, cnx_dir = FIX / "mae" / "jax" / "tiny-shared", FIX / "convnext" / "hf" / "tiny-shared"
    save_encoder(load_official_mae(mae_dir).encoder, tmp_path / "enc")  # what `-p feature_encoder <folder>` reads
    m_io = np.load(mae_dir / "io.npz")
    x = torch.from_numpy(m_io["x"]).permute(0, 3, 1, 2).contiguous()  # [B, 4, 16, 16]
    ds = ImageDataset(x, torch.zeros(len(x), dtype=torch.long), ["a"], "fix", "fp-fix")
    fs, info = build_features(train_config("cpu-pixel", feature_encoder=str(tmp_path / "enc"), convnext=None), ds, "cpu", progress=False)
    f = fs(x)
    want = sorted(k[6:] for k in m_io.files if k.startswith("feat__"))
    assert sorted(f) == sorted(want + ["global"]) and "no ConvNeXt-V2" in info["summary"]
    assert all(_close(f[k], m_io["feat__" + k]) for k in want), [k for k in want if not _close(f[k], m_io["feat__" + k])]
    # ConvNeXt: the fixture's input is ImageNet-normalised; a run feeds generator pixels in [-1, 1]
    c_io = np.load(cnx_dir / "io.npz")
    xn = torch.from_numpy(c_io["x"]).permute(0, 3, 1, 2).contiguous()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    xp = (xn * std + mean) * 2 - 1
    dsc = ImageDataset(xp, torch.zeros(len(xp), dtype=torch.long), ["a"], "fixc", "fp-fixc")
    fsc, _ = build_features(train_config("cpu-pixel", feature_encoder=None, convnext=str(cnx_dir)), dsc, "cpu", progress=False)
    fc = fsc(xp)
    wantc = sorted(k[6:] for k in c_io.files if k.startswith("feat__"))
    assert sorted(fc) == sorted(wantc + ["global"])
    assert all(_close(fc[k], c_io["feat__" + k]) for k in wantc), [k for k in wantc if not _close(fc[k], c_io["feat__" + k])]
