"""Issue 14: the options added for the official architecture leave the default generator and MAE encoder unchanged,
and the copied parity fixtures are byte-identical to the shared ones."""
import hashlib
from pathlib import Path

import pytest
import torch

from drifting.generator import build_generator
from drifting.mae import ResNetEncoder

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "official"


def _seeded_generator_output():
    torch.manual_seed(0)
    g = build_generator("tiny").eval()
    with torch.no_grad():
        for _, p in sorted(g.named_parameters()): p.copy_(torch.randn(p.shape) * 0.2)
    gi = torch.Generator().manual_seed(1)
    eps = torch.randn(3, 2, 8, 8, generator=gi)
    st = torch.randint(0, 8, (3, 4), generator=gi)
    with torch.no_grad(): out = g(eps, torch.tensor([0, 4, 2]), torch.tensor([1.0, 2.0, 3.5]), st)
    return g, out, gi


def test_default_generator_unchanged_by_the_official_options():
    # reference values computed with the code of main at 2a80e88 (before the options existed), same script
    g, out, _ = _seeded_generator_output()
    keys = hashlib.sha256(",".join(g.state_dict().keys()).encode()).hexdigest()[:16]
    assert (keys, len(g.state_dict())) == ("15c88f8452dabc28", 50)
    assert out.square().sum().item() == pytest.approx(80.20646667480469, rel=1e-5)
    ref = [-0.15790441632270813, 0.14998139441013336, -0.023865938186645508, 0.06650284677743912,
           0.12297169864177704, 0.027067985385656357]
    assert torch.allclose(out.flatten()[:6], torch.tensor(ref), atol=1e-5)


def test_default_mae_encoder_unchanged_by_gn_eps():
    _, _, gi = _seeded_generator_output()  # the same RNG stream as the reference script
    torch.manual_seed(0)
    e = ResNetEncoder(in_channels=3, width=8, blocks=(1, 2, 1, 1))
    with torch.no_grad():
        for n, p in sorted(e.named_parameters()): p.copy_(torch.randn(p.shape) * 0.3 + (1.0 if "gn" in n and p.ndim == 1 else 0.0))
    x = torch.randn(2, 3, 16, 16, generator=gi)
    with torch.no_grad(): acts = e.get_activations(x)
    keys = hashlib.sha256(",".join(e.state_dict().keys()).encode()).hexdigest()[:16]
    assert keys == "421ef984fe4ca1ca" and list(acts) == ['conv1', 'layer1', 'layer2', 'layer2_blk2', 'layer3', 'layer4']
    ref = {'conv1': 9154.246711, 'layer1': 1223.81987, 'layer2': 439.704217, 'layer2_blk2': 14624.822609,
           'layer3': 223.599605, 'layer4': 94.452384}
    for k, v in ref.items(): assert acts[k].double().square().sum().item() == pytest.approx(v, rel=1e-5), k


def test_fixture_copies_equal_the_shared_fixtures():
    shared = ROOT.parent / "shared" / "fixtures" / "official"
    files = sorted(p.relative_to(FIX) for p in FIX.rglob("*") if p.is_file())
    assert len(files) == 10, files  # README + 3 × (config/metadata, weights, io.npz)
    if not shared.is_dir():
        pytest.skip(f"no {shared} beside this clone: cannot compare the copies with the shared originals")
    assert files == sorted(p.relative_to(shared) for p in shared.rglob("*") if p.is_file())
    for f in files: assert (FIX / f).read_bytes() == (shared / f).read_bytes(), f


@pytest.mark.slow
def test_run_eval_accepts_a_released_model_name(tmp_path):
    "run_eval -p checkpoint hf://<name>: the released generator (here the fixture, placed by hand) is converted and evaluated."
    import json, os, subprocess, sys
    from drifting.builtin_vae import BuiltinRecipe, builtin_key, builtin_vae
    from drifting.bundle import validate_bundle
    from drifting.pipeline import OFFICIAL_REVISION
    cache = tmp_path / "cache"
    manual = cache / "official" / "manual" / "models" / "gen" / "jax" / "ablation"
    manual.mkdir(parents=True)
    for f in ("metadata.json", "ema_params.msgpack"):
        (manual / f).write_bytes((FIX / "models" / "gen" / "jax" / "tiny-shared" / f).read_bytes())
    quick = BuiltinRecipe(steps=3, batch_size=16, scale_items=256, eval_items=64)  # a 4×8×8-latent decoder, plumbing only
    builtin_vae(cache / "vae", recipe=quick, progress=False)
    params = dict(checkpoint="hf://ablation", alphas="1,2", n_per_class=2, dataset="mnist5k", resolution=32,
                  vae=str(cache / "vae" / builtin_key(recipe=quick)), metric_net="classifier", nn_audit=False,
                  num_threads=1, progress=False, runs_dir=str(tmp_path / "runs"))
    args = [a for k, v in params.items() for a in ("-p", k, str(v))]
    r = subprocess.run([str(Path(sys.executable).parent / "papermill"), str(ROOT / "nbs" / "run_eval.ipynb"),
                        str(tmp_path / "eval.ipynb"), *args, "--no-progress-bar"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=900, env=dict(os.environ, DRIFTING_CACHE=str(cache)))
    assert r.returncode == 0, r.stderr[-4000:]
    (bundle,) = sorted((tmp_path / "runs" / "eval").iterdir())
    validate_bundle(bundle)
    ev = json.loads((bundle / "artifacts" / "eval.json").read_text())
    assert [row["alpha"] for row in ev["rows"]] == [1.0, 2.0] and ev["protocol"]["n_per_alpha"] == 2 * 11
    sha12 = hashlib.sha256((manual / "ema_params.msgpack").read_bytes()).hexdigest()[:12]  # placed by hand: unverified
    conv = cache / "official" / "eval" / f"ablation@unverified-{sha12}" / "artifacts" / "checkpoints" / "last.pt"
    assert ev["protocol"]["checkpoint"] == str(conv)
    assert not (cache / "official" / "eval" / f"ablation@{OFFICIAL_REVISION[:12]}").exists()
