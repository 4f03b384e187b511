"""The toy run notebook end to end through papermill: tiny parameters reach the run, the run leaves a complete and
valid bundle, bad parameters fail before any work."""
import base64, io, json, os, subprocess, sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from drifting.bundle import validate_bundle

NB = Path(__file__).resolve().parents[1] / "nbs" / "run_toy.ipynb"
TINY = dict(steps=5, n_gen=128, n_pos=128, n_eval=128, num_threads=1, progress=False)


def test_parameters_cell_is_tagged():
    nb = nbformat.read(NB, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell must carry the papermill 'parameters' tag"
    assert "steps = 2000" in code[0].source  # the defaults live there, so -p overrides them


def _bundles(runs):
    return sorted((runs / "toy").iterdir()) if (runs / "toy").exists() else []


def test_run_toy_tiny(tmp_path):
    "`drifting run nbs/run_toy.ipynb OUT -p ...` leaves a valid bundle holding the executed notebook, images intact."
    runs = tmp_path / "runs"
    out_nb = tmp_path / "executed.ipynb"
    params = dict(TINY, target="ring8", seed=3, runs_dir=str(runs))
    args = [a for k, v in params.items() for a in ("-p", k, str(v))]
    r = subprocess.run([str(Path(sys.executable).parent / "drifting"), "run", str(NB), str(out_nb), *args, "--no-progress-bar"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (bundle,) = _bundles(runs)
    assert validate_bundle(bundle) == []
    figs = sorted(p.name for p in (bundle / "artifacts" / "figures").iterdir())
    assert figs == ["loss.png", "samples.png"]
    for png in figs:
        data = (bundle / "artifacts" / "figures" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 200_000
    manifest = json.loads((bundle / "run_manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["notebook"]["output"] == str(out_nb)
    # the bundle's notebook is papermill's, its images byte for byte (and they decode)
    mine, theirs = (json.loads(p.read_text()) for p in (bundle / "notebook.ipynb", out_nb))
    pngs = lambda nb: [o["data"]["image/png"] for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pngs(mine)) >= 2 and pngs(mine) == pngs(theirs)
    from PIL import Image
    for b in pngs(mine): assert Image.open(io.BytesIO(base64.b64decode(b))).size[0] > 0
    # the -p values reached the run (the defaults are 2000 steps, 2048 samples, checkerboard, seed 0)
    cfg = json.loads((bundle / "provenance" / "repro.json").read_text())["config"]
    assert (cfg["steps"], cfg["n_gen"], cfg["n_pos"], cfg["n_eval"], cfg["target"], cfg["seed"]) == (5, 128, 128, 128, "ring8", 3)
    m = json.loads((bundle / "metrics.json").read_text())
    scal = m["scalars"]
    assert scal["steps"] == 5 and scal["energy_distance"] > scal["energy_floor"]  # 5 steps are far from the target
    assert len(scal["mode_fractions"]) == 8 and scal["num_threads"] == 1
    assert (bundle / "artifacts" / "checkpoints" / "last.pt").exists()
    assert "-p steps 5" in (bundle / "RUN.md").read_text()  # RUN.md gives the command that re-runs it


@pytest.mark.parametrize("params, msg", [(dict(target="moons"), "valid targets"),
                                         (dict(n_eval=1), "n_eval must be an int")])
def test_run_toy_bad_parameters_fail_before_work(tmp_path, params, msg):
    runs = tmp_path / "runs"
    with pytest.raises(pm.PapermillExecutionError, match=msg):
        pm.execute_notebook(str(NB), str(tmp_path / "executed.ipynb"), parameters=dict(TINY, runs_dir=str(runs), **params),
                            cwd=str(tmp_path), progress_bar=False)
    assert _bundles(runs) == []  # no bundle was started
