"""Every combination `run_latent` accepts, on 2 processes (issue 22): latents and pixels, `aug='rrc'`, no feature
encoder, a ConvNeXt-V2 folder (a tiny random one), and a resume; each through papermill with `-p nproc 2` on tiny
parameters. And 2 processes rebuilt from a job folder draw the same augmented batches as 1 process."""
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

from drifting.builtin_vae import BuiltinRecipe, builtin_key, builtin_vae

NB = Path(__file__).resolve().parents[1] / "nbs" / "run_latent.ipynb"
QUICK_VAE = BuiltinRecipe(steps=3, batch_size=16, scale_items=256, eval_items=64)  # plumbing only
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    "One cache for the module (VAE, MAEs, classifier), a tiny ConvNeXt-V2 folder, the tiny pixel parameters."
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification
    root = tmp_path_factory.mktemp("combos")
    builtin_vae(root / "cache" / "vae", recipe=QUICK_VAE, progress=False)
    torch.manual_seed(0)
    cnx = ConvNextV2ForImageClassification(ConvNextV2Config(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_labels=3))
    cnx.save_pretrained(root / "convnext")
    tiny = dict(dataset="digits8", resolution=16, vae="None", preset="tiny", steps=4, ckpt_every=2, mae_preset="pixel-small",
                mae_steps=2, alpha_eval="1", eval_per_class=2, fid_n=0, num_threads=1, progress=False, nproc=2)
    return dict(root=root, tiny=tiny, vae=str(root / "cache" / "vae" / builtin_key(recipe=QUICK_VAE)))


def _papermill(env, name, **params):
    p = dict(env["tiny"], runs_dir=str(env["root"] / "runs"), project=name, **params)
    args = [a for k, v in p.items() for a in ("-p", k, str(v))]  # `-p vae None` is papermill's None
    e = dict(os.environ, DRIFTING_CACHE=str(env["root"] / "cache"), OMP_NUM_THREADS="1")
    r = subprocess.run([str(Path(sys.executable).parent / "papermill"), str(NB), str(env["root"] / f"{name}.ipynb"), *args,
                        "--no-progress-bar"], cwd=env["root"], env=e, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    bundles = sorted((env["root"] / "runs" / name).iterdir())
    return bundles[-1]


def _check_two_processes(bundle):
    man = json.loads((bundle / "run_manifest.json").read_text())
    assert man["status"] == "completed" and man["world_size"] == 2 and man["distributed"]["mode"] == "exact"
    assert sorted(p.parent.name for p in (bundle / "logs" / "ranks").rglob("stderr.log")) == ["0", "1"]
    steps = [json.loads(l) for l in (bundle / "logs" / "steps.jsonl").read_text().splitlines()]
    assert steps[-1]["step"] == 4
    return torch.load(bundle / "artifacts" / "checkpoints" / "last.pt", weights_only=True), steps


COMBOS = {  # name -> (parameters, feature keys every step's record must hold, keys it must not)
    "latents": (dict(vae="VAE", mae_preset="tiny", resolution=32), {"global", "norm_x", "layer1"}, {"convenxt_stage_1"}),
    # the real items' features once (D-speed-4): each worker builds its memo from the job folder's config
    "pixels": (dict(cache_real_features=True), {"global", "norm_x", "conv1"}, {"convenxt_stage_1"}),
    "pixels-rrc": (dict(aug="rrc"), {"global", "conv1"}, set()),
    # raw_maps (ours, opt-in) must reach the workers too: they rebuild the feature space from the job folder
    "no-encoder-raw-maps": (dict(feature_encoder=None, raw_maps=True), {"global", "raw", "raw_std_2"}, {"conv1", "norm_x"}),
    "convnext": (dict(feature_encoder=None, convnext="CNX"), {"global", "convenxt_stage_1", "global_mean"}, {"conv1"}),
}


@pytest.mark.parametrize("name", list(COMBOS))
def test_two_processes(env, name):
    params, want, absent = COMBOS[name]
    params = {k: {"VAE": env["vae"], "CNX": str(env["root"] / "convnext")}.get(v, v) if isinstance(v, str) else v
              for k, v in params.items()}
    state, steps = _check_two_processes(_papermill(env, name, **params))
    keys = set(steps[0]["v2"])
    assert want <= keys and not keys & absent, keys
    assert state["config"]["aug"] == params.get("aug") and state["config"]["feature_encoder"] == params.get("feature_encoder", "builtin")
    assert state["config"]["convnext"] == params.get("convnext")
    assert state["config"]["raw_maps"] == params.get("raw_maps", False)
    assert state["config"]["cache_real_features"] == params.get("cache_real_features", False)


def test_resume_on_two_processes(env):
    "A 2-process run resumed on 2 processes from its step-2 checkpoint ends with the uninterrupted run's weights."
    first = _papermill(env, "resume-first", aug="rrc")
    a, _ = _check_two_processes(first)
    resumed = _papermill(env, "resume-second", aug="rrc", resume=str(first / "artifacts" / "checkpoints" / "step_2.pt"))
    b, steps = _check_two_processes(resumed)
    assert [s["step"] for s in steps] == [3, 4]
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_two_processes_draw_the_same_augmented_batches(tmp_path, monkeypatch):
    "aug='rrc' reaches the workers: ranks rebuilt from a job folder crop the same batches and fill the same queues."
    sys.path.insert(0, str(Path(__file__).parent))
    from _dist_workers import pushed_batches
    from drifting.data import ImageDataset
    from drifting.distributed import launch, save_job
    from drifting.feature_nets import build_features
    from drifting.streams import AugmentedStream, data_stream
    from drifting.train import Trainer, train_config
    monkeypatch.setenv("DRIFTING_CACHE", str(tmp_path))
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    ds = ImageDataset(torch.rand(40, 1, 16, 16, generator=g) * 2 - 1, torch.arange(40) % 4, list("abcd"), "p", "fp-p")
    cfg = train_config("tiny", aug="rrc", flip=True, feature_encoder=None, n_c=2)
    one = Trainer(cfg, data_stream(cfg, ds), build_features(cfg, ds, "cpu")[0], "cpu")
    save_job(tmp_path / "job", one)
    want = [one.data.batch(i)[0] for i in range(3)]
    one.fit(3, progress=False)
    for r in launch(pushed_batches, 2, str(tmp_path / "job"), 3):
        assert r["stream"] == AugmentedStream.__name__
        assert all(torch.equal(x, y) for x, y in zip(r["batches"], want))
        q = one.queues.state_dict()
        assert q.keys() == r["queues"].keys() and all(torch.equal(q[k], r["queues"][k]) for k in q)
