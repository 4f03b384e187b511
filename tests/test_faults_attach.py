"""Fault catalogue, one executed notebook per bundle (issue 23, item 2): `drifting run` prepares the bundle, hands
its path to the notebook as the one parameter `bundle`, and attaches its own private papermill output; a plain
papermill run is attached with `drifting attach`. A sweep that reuses one output path — the next run evaluates or
resumes this bundle — can never put the next run's notebook into this bundle. No environment handshake, no reading
of another process's command line. Every case ends with `settled`."""
import json, os, subprocess, sys
from pathlib import Path

import nbformat
import pytest

from drifting.bundle import validate_bundle
from drifting.cli import main, run_notebook
from drifting.provenance import BundleError, attach_notebook, start_run
from _faults import earlier, events, images, kw, manifest, quick_run, settled, snapshot, tiny_repo

BIN = Path(sys.executable).parent
PW = "Sw0rdf1sh-Pa55"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tiny_repo(tmp_path_factory.mktemp("repo"))


def _nb(run_dir, params: dict, outputs=()) -> dict:
    "An executed notebook: papermill's recorded parameters, start_run's line for `run_dir`, more outputs."
    nb = nbformat.v4.new_notebook()
    line = nbformat.v4.new_output("stream", name="stderr", text=f"drifting: run bundle {run_dir}\n")
    nb.cells = [nbformat.v4.new_code_cell("run = start_run(...)", outputs=[line, *outputs])]
    nb.metadata["papermill"] = {"parameters": params}
    return nb


# the next run of a sweep names this bundle A in every way but the two that mean "I am run A's notebook"
NAMES_A = {
    "eval_checkpoint_param": lambda a, b: _nb(b, {"checkpoint": str(a)}),
    "resume_param": lambda a, b: _nb(b, {"resume": str(a / "artifacts/checkpoints/last.pt")}),
    "printed_path": lambda a, b: _nb(b, {}, [nbformat.v4.new_output("stream", name="stdout", text=f"loading {a}\n")]),
    "bundle_name_in_error": lambda a, b: _nb(b, {}, [nbformat.v4.new_output("error", ename="E", evalue=a.name,
                                                                             traceback=[f"drifting: run bundle {a}x"])]),
    "bundle_param_of_b": lambda a, b: _nb(a, {"bundle": str(b), "checkpoint": str(a)}),
}


@pytest.mark.parametrize("case", list(NAMES_A))
def test_next_runs_notebook_is_refused(repo, tmp_path, case):
    "A notebook that names bundle A without being A's (a reused output path) is refused; A stays as it was."
    runs = tmp_path / "runs"; before = earlier(repo, runs)
    a = quick_run(repo, runs).finish(); b = quick_run(repo, runs).finish()
    src = tmp_path / "shared.ipynb"; nbformat.write(nbformat.from_dict(NAMES_A[case](a.dir, b.dir)), src)
    snap = snapshot(a.dir)
    with pytest.raises(BundleError, match="is not the notebook of run"):
        attach_notebook(a.dir, src)
    refused = events(a.dir)[-1]
    assert refused["event"] == "notebook_refused" and manifest(a.dir)["notebook"] is None
    assert {k: v for k, v in snapshot(a.dir).items() if k != "provenance/events.jsonl"} == {
        k: v for k, v in snap.items() if k != "provenance/events.jsonl"}
    assert validate_bundle(a.dir) == [] and settled(runs, before) > 20


@pytest.mark.parametrize("case", ["bundle_param", "start_line"])
def test_own_notebook_is_attached(repo, tmp_path, case):
    runs = tmp_path / "runs"; before = earlier(repo, runs); a = quick_run(repo, runs).finish()
    nb = _nb(a.dir, {"bundle": str(a.dir)}) if case == "bundle_param" else _nb(a.dir, {"steps": 3})
    src = tmp_path / "out.ipynb"; nbformat.write(nb, src)
    assert main(["attach", str(src), str(a.dir)]) == 0
    m = manifest(a.dir)
    assert m["notebook"]["kind"] == "copy" and "notebook.ipynb" in (a.dir / "RUN.md").read_text()
    assert "not attached" not in (a.dir / "RUN.md").read_text() and validate_bundle(a.dir) == []
    settled(runs, before)


TRAIN = """
import base64
from IPython.display import Image, display
from drifting.provenance import start_run
run = start_run("toy", {"seed": 0, "checkpoint": checkpoint, "db_password": db_password}, runs_dir=runs_dir,
                bundle=bundle, code_root=code_root, package="pkg", smoke=False)
png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
display(Image(data=png))
print("password:", db_password)
run.finish()
"""


def _write_nb(path: Path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("runs_dir = None\nbundle = None\ncheckpoint = None\ncode_root = None\n"
                                          "db_password = None", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(TRAIN)]
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nbformat.write(nb, path)


@pytest.mark.slow  # two papermill kernels: ~15 s on an idle 2-core machine
def test_sweep_reusing_one_output_path_with_drifting_run(repo, tmp_path):
    "`drifting run` twice with one OUTPUT (the second names the first): each bundle holds its own notebook."
    runs = tmp_path / "runs"; before = earlier(repo, runs); nb = tmp_path / "train.ipynb"; _write_nb(nb)
    out = str(tmp_path / "shared_out.ipynb")
    common = ["-p", "runs_dir", str(runs), "-p", "code_root", str(repo), "-p", "db_password", PW]
    rc, (a,) = run_notebook(str(nb), out, common)
    snap_a = snapshot(a)
    rc2, (b,) = run_notebook(str(nb), out, [*common, "-p", "checkpoint", str(a)])
    assert rc == rc2 == 0 and a != b and snapshot(a) == snap_a
    for d in (a, b):
        got = json.loads((d / "notebook.ipynb").read_text())
        assert got["metadata"]["papermill"]["parameters"]["bundle"] == str(d) and validate_bundle(d) == []
        assert manifest(d)["command"].startswith("drifting run") and manifest(d)["notebook"]["output"] == out
    assert images(json.loads((b / "notebook.ipynb").read_text())) == images(json.loads(Path(out).read_text()))
    assert images(json.loads(Path(out).read_text()))[0][0] == "image/png"
    settled(runs, before, [PW])


@pytest.mark.slow  # two papermill kernels: ~15 s on an idle 2-core machine
def test_sweep_reusing_one_output_path_with_plain_papermill(repo, tmp_path):
    "Plain papermill twice into one output, then `drifting attach` of the shared file to the first: refused."
    runs = tmp_path / "runs"; before = earlier(repo, runs); nb = tmp_path / "train.ipynb"; _write_nb(nb)
    out = tmp_path / "shared_out.ipynb"
    pm = lambda *more: subprocess.run([str(BIN / "papermill"), str(nb), str(out), "-p", "runs_dir", str(runs), "-p",
                                       "code_root", str(repo), *more], capture_output=True, text=True, timeout=300)
    assert pm().returncode == 0
    (a,) = [d for d in (runs / "toy").iterdir() if d != before[0]]
    assert main(["attach", str(out), str(a)]) == 0 and manifest(a)["notebook"]["kind"] == "copy"
    assert "kernel started without `drifting run`" in manifest(a)["command"]
    snap_a = snapshot(a)
    assert pm("-p", "checkpoint", str(a)).returncode == 0
    assert main(["attach", str(out), str(a)]) == 1  # the shared file is now the second run's notebook
    assert {k: v for k, v in snapshot(a).items() if k != "provenance/events.jsonl"} == {
        k: v for k, v in snap_a.items() if k != "provenance/events.jsonl"}
    settled(runs, before)


def test_no_environment_handshake_or_argv_sniffing(repo, tmp_path, monkeypatch):
    "The old handshake variables and a papermill-looking parent are ignored: the run records its own command."
    runs = tmp_path / "runs"; before = earlier(repo, runs); pointer = tmp_path / "pointer.txt"
    monkeypatch.setenv("DRIFTING_RUN_POINTER", str(pointer)); monkeypatch.setenv("DRIFTING_COMMAND", "papermill x y")
    monkeypatch.setenv("JPY_PARENT_PID", str(os.getpid()))
    run = quick_run(repo, runs).finish()
    m = manifest(run.dir)
    assert not pointer.exists() and m["command"] != "papermill x y" and m["notebook"] is None
    assert not (run.dir / "notebook.ipynb").exists() and settled(runs, before) > 20


def test_bundle_not_prepared_by_drifting_run_is_refused(repo, tmp_path):
    "start_run(bundle=...) with a folder `drifting run` did not prepare (or one already started): clear error."
    runs = tmp_path / "runs"; before = earlier(repo, runs)
    with pytest.raises(FileNotFoundError, match="not a bundle prepared by `drifting run`"):
        start_run("toy", {"seed": 0}, bundle=before[0], **kw(repo, runs))
    with pytest.raises(FileNotFoundError, match="not a bundle prepared by `drifting run`"):
        start_run("toy", {"seed": 0}, bundle=tmp_path / "nowhere", **kw(repo, runs))
    settled(runs, before)


def test_drifting_run_refuses_a_bundle_parameter(tmp_path, capsys):
    nb = tmp_path / "train.ipynb"; _write_nb(nb)
    assert main(["run", str(nb), "-p", "bundle", str(tmp_path)]) == 2
    assert "passes `-p bundle` itself" in capsys.readouterr().err and sorted(tmp_path.iterdir()) == [nb]
