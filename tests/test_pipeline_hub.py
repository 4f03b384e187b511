"""The README's five sampling lines, run as a user runs them: on a folder `drifting export` wrote from a tiny run
bundle, in a fresh process with empty Hugging Face and drifting caches and HF_HUB_OFFLINE=1, so nothing is downloaded
or retrained; the same folder as a Hub repository in the Hugging Face cache (#25 item 1)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_trainer import tiny_encoder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAMES = sorted(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])  # as class folders


def readme_lines() -> str:
    "The code block under the README's 'Sample in five lines' heading."
    m = re.search(r"## Sample in five lines\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert m, "README.md has no 'Sample in five lines' code block"
    return m.group(1)


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 8),
                         layers_per_block=1, norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16, scaling_factor=1.0)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A bundle as a latent run leaves it (checkpoint, repro.json config naming its data and VAE folder, metrics.json,
    eval_alpha.json), from 2 steps of a tiny trainer on random 2×8×8 'latents' of 10 named classes."""
    from drifting.data import ImageDataset
    from drifting.feature_nets import build_features
    from drifting.streams import data_stream
    from drifting.train import Trainer, train_config

    t = tmp_path_factory.mktemp("hub")
    data = t / "digits"  # the run's dataset: a class-folder tree, where the export reads the class names
    for n in NAMES:
        (data / n).mkdir(parents=True)
        Image.new("L", (16, 16)).save(data / n / "a.png")
    g = torch.Generator().manual_seed(1)
    ds = ImageDataset(torch.randn(200, 2, 8, 8, generator=g), torch.arange(200) % 10, NAMES, "digits", "fp-digits",
                      kind="latents")  # fmt: skip
    cfg = train_config("tiny", feature_encoder=tiny_encoder(), every_k_block=1)
    tr = Trainer(cfg, data_stream(cfg, ds), build_features(cfg, ds, "cpu", progress=False)[0], "cpu")
    tr.fit(2, progress=False)
    b = t / "bundle"
    (b / "artifacts" / "checkpoints").mkdir(parents=True)
    (b / "provenance").mkdir()
    tr.save(b / "artifacts" / "checkpoints" / "last.pt")
    tiny_vae().save_pretrained(t / "vae_src")
    rec = dict(config=dict(dataset=str(data), vae=str(t / "vae_src")), dataset={})
    (b / "provenance" / "repro.json").write_text(json.dumps(rec))
    (b / "metrics.json").write_text(json.dumps(dict(schema_version=1, scalars=dict(steps=2, best_frechet=12.5),
                                                    series={})))  # fmt: skip
    ev = dict(rows=[], ema=True, seed=1, per_class=4, classifier="tiny-clf")
    (b / "artifacts" / "eval_alpha.json").write_text(json.dumps(ev))
    return t, b, tr


@pytest.fixture(scope="module")
def exported(run):
    from drifting.cli import main

    t, b, _ = run
    assert main(["export", str(b), str(t / "digits_model")]) == 0
    return t / "digits_model"


def test_export_writes_a_pipeline_folder_with_its_vae_and_card(run, exported):
    t, b, tr = run
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors", "vae"]
    assert (exported / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    info = json.loads((exported / "config.json").read_text())["info"]
    assert (info["step"], info["weights"], info["class_names"]) == (2, "ema", NAMES)
    card = (exported / "README.md").read_text()
    assert "library_name: drifting" in card and "- steps: 2" in card and f"- dataset: {t / 'digits'}" in card
    assert "Our numbers, not the paper's" in card and "| best_frechet | 12.5 |" in card and "- per_class: 4" in card
    before = sorted(p.name for p in exported.rglob("*"))
    from drifting.cli import main

    assert main(["export", str(b), str(exported)]) == 1  # refused: the folder holds an export
    assert sorted(p.name for p in exported.rglob("*")) == before


def test_the_readme_lines_run_offline_on_an_empty_cache(run, exported, tmp_path):
    "The five lines in a fresh process: same images as the run's own EMA generator and VAE, nothing cached or fetched."
    from diffusers import AutoencoderKL

    from drifting.pipeline import DriftingPipeline
    from drifting.sample import load_generator
    from drifting.tokenizer import Tokenizer

    t, b, tr = run
    ref = DriftingPipeline(load_generator(b / "artifacts" / "checkpoints" / "last.pt"),
                           Tokenizer(AutoencoderKL.from_pretrained(t / "vae_src"), "src"))  # fmt: skip
    want = np.asarray(ref(list(range(10)), alpha=1.5, generator=torch.Generator().manual_seed(0)).images[7])
    # the same folder as a Hub repository in the (empty) Hugging Face cache, as snapshot_download leaves it
    cache = tmp_path / "cache"
    repo = cache / "hf" / "hub" / "models--someone--tiny-drifting"
    snap = repo / "snapshots" / ("0" * 40)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(exported, snap)
    hub_files = sorted(str(p) for p in cache.rglob("*"))
    code = readme_lines().replace('"digits_model"', repr(str(exported)))
    code += (
        "\nhub = DriftingPipeline.from_pretrained('someone/tiny-drifting', torch_dtype=torch.bfloat16)"
        "\nprint(json.dumps(dict(vae=pipe.vae.name, hub_vae=hub.vae.name, hub_dtype=str(hub.vae.vae.dtype),"
        " hub_ids=hub.get_label_ids(['seven', 'one']))))"
    )
    env = dict(os.environ, HF_HOME=str(cache / "hf"), HF_HUB_CACHE=str(cache / "hf" / "hub"),
               DRIFTING_CACHE=str(cache / "drifting"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))  # fmt: skip
    os.rename(t / "vae_src", t / "vae_moved")  # the export must not refer back to the run's VAE folder
    try:
        r = subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    finally:
        os.rename(t / "vae_moved", t / "vae_src")
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    assert rec == dict(vae="local:vae_src", hub_vae="local:vae_src", hub_dtype="torch.bfloat16",
                    hub_ids=[NAMES.index("seven"), NAMES.index("one")])
    got = np.asarray(Image.open(tmp_path / "seven.png"))
    assert got.shape == want.shape == (16, 16)
    # the same noise and weights; another process may sum in another order: at most one uint8 level from rounding
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert sorted(str(p) for p in cache.rglob("*")) == hub_files  # nothing downloaded, trained or cached
