"""`drifting run` shows what the cells print in the terminal while the notebook runs (papermill --log-output)."""
import json, subprocess, sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_drifting_run_forwards_cell_output(tmp_path):
    cell = lambda src, tags=(): dict(cell_type="code", metadata=dict(tags=list(tags)), source=src, outputs=[], execution_count=None)
    nb = dict(nbformat=4, nbformat_minor=5, metadata=dict(kernelspec=dict(name="python3", display_name="Python 3", language="python")),
              cells=[cell("n = 2", ["parameters"]), cell("import sys\nfor i in range(n): print(f'progress-marker {i}', file=sys.stderr)")])
    (tmp_path / "t.ipynb").write_text(json.dumps(nb))
    env = dict(__import__("os").environ, DRIFTING_RUNS_DIR=str(tmp_path / "runs"))
    r = subprocess.run([str(BIN / "drifting"), "run", "t.ipynb", "-p", "n", "3"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert all(f"progress-marker {i}" in out for i in range(3)), out[-3000:]  # -p reached it, and the lines reached us
    # the notebook never started a run: the folder `drifting run` prepared is gone, the executed notebook is kept
    assert not any((tmp_path / "runs").rglob("invocation.json")) and (tmp_path / "t.executed.ipynb").is_file()
