"""Run bundles end to end: layout and schemas, repro identity, dirty trees, secrets, failures, kill -9 during a
checkpoint write, papermill parameters, the `drifting run` command, bad inputs. Real files in temp dirs; each test
that needs git state makes its own throw-away repository holding a copy of the `drifting` package."""
import hashlib, json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch

import drifting
from drifting.bundle import REQUIRED_DIRS, REQUIRED_FILES, validate_bundle
from drifting.fingerprint import ConfigError
from drifting.provenance import BundleError, load_checkpoint, start_run
from drifting.smoke import SmokeGateError

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "run_fixture.ipynb"
BIN = Path(sys.executable).parent
SECRETS = {"HF_TOKEN": "hf_" + "Zq8xKp2LmW4vN7tR1yB5cD9fG3hJ6kS0",
           "AWS_SECRET_ACCESS_KEY": "Tg7/pQ2xLm9+Vb4Nc8Rz1Wk5Yh3Jd6Fs0Ae2Uo7I",
           "WANDB_API_KEY": "9f2c4e6a8b0d1f3e5a7c9b2d4f6e8a0c1b3d5f7e"}


def git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


def make_repo(d: Path) -> Path:
    "A git repo holding a copy of the package, the environment manifest and the lock (so the smoke gate passes)."
    d.mkdir(parents=True, exist_ok=True)
    shutil.copytree(Path(drifting.__file__).parent, d / "drifting", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("environment.manifest.json", "requirements.lock.txt"): shutil.copy(REPO / f, d / f)
    (d / ".gitignore").write_text("runs/\n__pycache__/\n")
    git(d, "init", "-q"); git(d, "add", ".")
    git(d, "-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-qm", "fixture")
    return d


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("repo"))


def kw(repo, tmp_path, **more):
    return dict(code_root=repo, runs_dir=tmp_path / "runs", **more)


def tree_state(d: Path) -> dict:
    "Every file under d with its bytes' hash and mtime (to prove nothing was touched)."
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(Path(d).rglob("*")) if p.is_file() and not p.is_symlink()}


def full_run(run):
    run.log_metrics(step=1, loss=0.5)
    ck = run.save_checkpoint({"w": torch.arange(4.0), "step": 1}, step=1, best=True)
    run.log_eval(1, fid=12.5)
    run.save_predictions(np.zeros((2, 4, 4, 3), np.uint8), [0, 1], "s1", checkpoint=ck, latents=np.ones((2, 3), np.float32))
    return run.finish(fid=12.5)


def test_layout_and_schema(repo, tmp_path):
    run = full_run(start_run("toy", {"lr": 1e-3, "seed": 0, "name": "lr=${lr}"}, ["lr=0.01"], **kw(repo, tmp_path)))
    d = run.dir
    assert d.parent == tmp_path / "runs" / "toy"
    ts, short = d.name.rsplit("_", 1)
    assert time.strptime(ts, "%Y-%m-%d_%H-%M-%S") and short == git(repo, "rev-parse", "HEAD").strip()[:7]
    for f in REQUIRED_FILES: assert (d / f).is_file(), f
    for f in REQUIRED_DIRS: assert (d / f).is_dir(), f
    assert validate_bundle(d) == []
    m = json.loads((d / "run_manifest.json").read_text())
    assert m["schema_version"] == "1" and m["project_name"] == "toy" and m["status"] == "completed"
    assert m["git_hash"] == git(repo, "rev-parse", "HEAD").strip() and m["git_dirty"] is False
    assert m["torch_version"] == torch.__version__ and "cuda_version" in m and m["device"]["type"] in ("cpu", "cuda")
    assert m["package_versions"]["torch"] and m["smoke_ok"] is True
    cb = json.loads((d / "codebase_fingerprint.json").read_text())
    assert cb["dirty"] is False and cb["files"]["provenance.py"] == hashlib.sha256((repo / "drifting/provenance.py").read_bytes()).hexdigest()
    snap = json.loads((d / "env_snapshot.json").read_text())
    hw = snap["hardware"]  # what GPU runs are compared by: present everywhere, None where the machine has none
    for k in ("cuda_version", "cudnn_version", "nccl_version", "driver_version", "gpu_model", "cpu_model", "memory_gb"):
        assert k in hw, k
    assert hw["determinism"]["deterministic_algorithms"] == torch.are_deterministic_algorithms_enabled()
    assert m["device"]["cpu_model"] == hw["cpu_model"] and m["device"]["determinism"] == hw["determinism"]
    if not torch.cuda.is_available():
        assert (hw["cudnn_version"], hw["nccl_version"], hw["driver_version"], hw["gpu_model"]) == (None,) * 4
    assert snap["smoke"]["ok"] and snap["smoke"]["expected"]["python"] and snap["smoke"]["observed"]["python"]["executable"] == sys.executable
    assert "pip_check" in snap["smoke"]["observed"]
    assert "${lr}" in (d / "config.yaml").read_text() and "${" not in (d / "config_resolved.yaml").read_text()
    assert "lr=0.01" in (d / "config_resolved.yaml").read_text()
    assert (d / "provenance/git.diff").read_text() == ""
    meta = json.loads((d / "artifacts/predictions/metadata.json").read_text())
    s = meta["samples"][0]
    assert meta["contract_version"] and s["id"] == "s1" and s["model"]["checkpoint"] == "artifacts/checkpoints/step_1.pt"
    with np.load(d / "artifacts/predictions/samples_s1.npz") as z:
        assert z["images"].dtype == np.uint8 and z["images"].shape == (2, 4, 4, 3) and z["labels"].dtype == np.int64
    for name in ("last.pt", "best.pt", "step_1.pt"):
        assert torch.equal(torch.load(d / "artifacts/checkpoints" / name, weights_only=True)["w"], torch.arange(4.0))
    events = [json.loads(l) for l in (d / "provenance/events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "checkpoint", "eval", "predictions", "end"]
    assert all("time" in e for e in events)
    md = (d / "RUN.md").read_text()
    assert "completed" in md and m["git_hash"] in md and "fid" in md


def test_repro_identical_then_config_change(repo, tmp_path):
    cfg = {"lr": 1e-3, "seed": 1, "model": {"width": 8}}
    a = start_run("toy", cfg, **kw(repo, tmp_path)).finish()
    b = start_run("toy", cfg, **kw(repo, tmp_path)).finish()
    assert a.dir != b.dir
    ra, rb = (x.dir / "provenance/repro.json" for x in (a, b))
    assert ra.read_bytes() == rb.read_bytes()
    assert "2026" not in ra.read_text() and str(tmp_path) not in ra.read_text()  # time-free, path-free
    c = start_run("toy", cfg, ["model.width=16"], **kw(repo, tmp_path)).finish()
    rc = c.dir / "provenance/repro.json"
    assert rc.read_bytes() != ra.read_bytes()
    assert json.loads(rc.read_text())["config"]["model"]["width"] == 16


def test_dirty_tree_detected(tmp_path):
    repo = make_repo(tmp_path / "repo")
    clean = start_run("toy", {"a": 1}, **kw(repo, tmp_path, smoke=False)).finish()
    with open(repo / "drifting" / "core.py", "a") as f: f.write("\n# an uncommitted edit\n")
    (repo / "notes.txt").write_text("an untracked file\n")
    dirty = start_run("toy", {"a": 1}, **kw(repo, tmp_path, smoke=False)).finish()
    m = json.loads((dirty.dir / "run_manifest.json").read_text())
    cb = json.loads((dirty.dir / "codebase_fingerprint.json").read_text())
    repro = json.loads((dirty.dir / "provenance/repro.json").read_text())
    diff = (dirty.dir / "provenance/git.diff").read_text()
    assert m["git_dirty"] is True and cb["dirty"] is True and repro["code"]["dirty"] is True
    assert "+# an uncommitted edit" in diff and "+an untracked file" in diff
    assert [u["path"] for u in repro["code"]["untracked"]] == ["notes.txt"] and cb["untracked"] == ["notes.txt"]
    assert cb["files"]["core.py"] != json.loads((clean.dir / "codebase_fingerprint.json").read_text())["files"]["core.py"]
    assert (dirty.dir / "provenance/repro.json").read_bytes() != (clean.dir / "provenance/repro.json").read_bytes()
    # the diff rebuilds the dirty tree from the commit
    fresh = tmp_path / "fresh"; subprocess.run(["git", "clone", "-q", str(repo), str(fresh)], check=True)
    git(fresh, "apply", str(dirty.dir / "provenance/git.diff"))
    assert (fresh / "drifting/core.py").read_text() == (repo / "drifting/core.py").read_text() and (fresh / "notes.txt").exists()


def all_bundle_bytes(d: Path) -> list[tuple[str, bytes]]:
    return [(str(p), p.read_bytes()) for p in Path(d).rglob("*") if p.is_file()]


def test_secrets_redacted(repo, tmp_path, monkeypatch):
    for k, v in SECRETS.items(): monkeypatch.setenv(k, v)
    monkeypatch.setenv("MY_NOTE", "token in a value: ghp_" + "Ab12Cd34Ef56Gh78Ij90Kl12Mn34")
    monkeypatch.setattr(sys, "argv", ["train.py", "--token", SECRETS["HF_TOKEN"]])
    cfg = {"api_key": "sk_live_" + "plainConfigSecret123", "url": "https://user:hunter2pass@host/x", "lr": 0.1}
    try:
        with start_run("toy", cfg, **kw(repo, tmp_path, smoke=False)) as run:
            run.log(f"logging {SECRETS['WANDB_API_KEY']}")
            raise RuntimeError(f"auth failed for {SECRETS['AWS_SECRET_ACCESS_KEY']}")
    except RuntimeError: pass
    files = all_bundle_bytes(run.dir)
    assert len(files) >= len(REQUIRED_FILES)
    needles = [*SECRETS.values(), "plainConfigSecret123", "hunter2pass", "ghp_Ab12Cd34"]
    for name, data in files:
        for s in needles: assert s.encode() not in data, (name, s)
    env = (run.dir / "provenance/env.txt").read_text().splitlines()
    assert env == sorted(env, key=lambda l: l.split("=", 1)[0]) and "HF_TOKEN=<redacted>" in env
    assert json.loads((run.dir / "run_manifest.json").read_text())["status"] == "failed"


def test_failure_midway_leaves_failed_bundle(repo, tmp_path):
    with pytest.raises(ZeroDivisionError):
        with start_run("toy", {"steps": 5}, **kw(repo, tmp_path, smoke=False)) as run:
            for step in range(5):
                run.log_metrics(step, loss=1.0 / (2 - step))
    for p in run.dir.rglob("*.json"): json.loads(p.read_text())
    assert validate_bundle(run.dir) == []
    m = json.loads((run.dir / "run_manifest.json").read_text())
    assert m["status"] == "failed" and m["error"]["type"] == "ZeroDivisionError"
    ev = [json.loads(l) for l in (run.dir / "provenance/events.jsonl").read_text().splitlines()]
    assert ev[-1]["event"] == "failure" and "ZeroDivisionError" in ev[-1]["traceback"]
    assert "failed" in (run.dir / "RUN.md").read_text()


def test_resume_event_and_state(repo, tmp_path):
    a = start_run("toy", {"a": 1}, **kw(repo, tmp_path, smoke=False))
    a.save_checkpoint({"w": torch.ones(2), "step": 7}, step=7); a.finish()
    b = start_run("toy", {"a": 1}, resume_from=a.dir, **kw(repo, tmp_path, smoke=False)).finish()
    assert b.resume_state["step"] == 7
    ev = [json.loads(l) for l in (b.dir / "provenance/events.jsonl").read_text().splitlines()]
    assert ev[1]["event"] == "resume" and ev[1]["from"].endswith("last.pt") and ev[1]["step"] == 7
    assert validate_bundle(b.dir) == []


def test_no_pickled_classes(repo, tmp_path):
    run = start_run("toy", {}, **kw(repo, tmp_path, smoke=False))
    with pytest.raises(TypeError, match="store state dicts"):
        run.save_checkpoint({"model": torch.nn.Linear(2, 2)}, step=1)
    run.save_checkpoint({"model": torch.nn.Linear(2, 2).state_dict(), "step": 1}, step=1)
    assert set(load_checkpoint(run.dir)["model"]) == {"weight", "bias"}
    run.finish()


KILL_WRITER = """
import sys, torch
from drifting.core import atomic_torch_save
big = torch.zeros(8_000_000)  # ~32 MB per checkpoint
for k in range(100):
    big.fill_(float(k))
    print("begin", k, flush=True)
    atomic_torch_save({"step": k, "w": big}, sys.argv[1])
    print("done", k, flush=True)
"""


def test_kill9_during_checkpoint_write(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    p = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().split() == ["begin", "0"] and p.stdout.readline().split() == ["done", "0"]
        assert p.stdout.readline().split() == ["begin", "1"]
        deadline = time.time() + 60
        while time.time() < deadline:  # kill once the second write is under way (its temp file has bytes)
            tmps = [t for t in path.parent.glob(".last.pt.*.tmp") if t.stat().st_size > 0]
            if tmps: break
            time.sleep(0.005)
        assert tmps, "never saw the second checkpoint write in progress"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait(timeout=30); p.stdout.close()
    assert p.returncode == -signal.SIGKILL
    leftovers = [t for t in path.parent.iterdir() if t != path]
    state = torch.load(path, weights_only=True)
    assert state["step"] in (0, 1) and torch.all(state["w"] == float(state["step"]))
    if leftovers: assert state["step"] == 0 and all(t.name.endswith(".tmp") for t in leftovers)


def test_bad_inputs_touch_no_bundle(repo, tmp_path):
    existing = start_run("toy", {"a": 1}, **kw(repo, tmp_path, smoke=False)).finish()
    before = tree_state(tmp_path / "runs"); dirs = sorted((tmp_path / "runs").rglob("*"))
    with pytest.raises(BundleError, match="invalid project name '../x'"):
        start_run("../x", {"a": 1}, **kw(repo, tmp_path, smoke=False))
    with pytest.raises(ConfigError, match="malformed config override 'lr'"):
        start_run("toy", {"a": 1}, ["lr"], **kw(repo, tmp_path, smoke=False))
    with pytest.raises(ConfigError, match="malformed config override"):
        start_run("toy", {"a": 1}, ["a=[1,2"], **kw(repo, tmp_path, smoke=False))
    with pytest.raises(ConfigError, match="cannot resolve"):
        start_run("toy", {"a": "${missing}"}, **kw(repo, tmp_path, smoke=False))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BundleError, match="is not writable"):
        start_run("toy", {"a": 1}, code_root=repo, runs_dir=tmp_path / "afile" / "runs", smoke=False)
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"; ro.mkdir(); ro.chmod(0o500)
        with pytest.raises(BundleError, match="is not writable"):
            start_run("toy", {"a": 1}, code_root=repo, runs_dir=ro, smoke=False)
    with pytest.raises(BundleError, match="not found"):
        start_run("toy", {"a": 1}, resume_from=tmp_path / "nope.pt", **kw(repo, tmp_path, smoke=False))
    assert tree_state(tmp_path / "runs") == before and sorted((tmp_path / "runs").rglob("*")) == dirs
    assert validate_bundle(existing.dir) == []


def test_smoke_gate_failure_stops_before_work(repo, tmp_path):
    bad = json.loads((repo / "environment.manifest.json").read_text()); bad["python"] = ">=9.0"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(SmokeGateError, match="python"):
        start_run("toy", {"a": 1}, manifest=tmp_path / "bad.json", **kw(repo, tmp_path))
    (d,) = (tmp_path / "runs" / "toy").iterdir()
    m = json.loads((d / "run_manifest.json").read_text())
    assert m["status"] == "failed" and m["smoke_ok"] is False and m["error"]["type"] == "SmokeGateError"
    assert json.loads((d / "env_snapshot.json").read_text())["smoke"]["ok"] is False


# ---- papermill end to end ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cleaned_nb(tmp_path_factory) -> Path:
    "A copy of the fixture notebook passed through nbdev_clean (the parameters tag must survive it)."
    nb = tmp_path_factory.mktemp("nb") / "run_fixture.ipynb"; shutil.copy(FIXTURE, nb)
    subprocess.run([str(BIN / "nbdev_clean"), "--fname", str(nb)], cwd=REPO, check=True, capture_output=True)
    cells = json.loads(nb.read_text())["cells"]
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells), "nbdev_clean dropped the parameters tag"
    return nb


def env_with_secrets(**more):
    return dict(os.environ, **SECRETS, **more)


def test_papermill_run_parameters_and_notebook(repo, tmp_path, cleaned_nb):
    "Plain papermill: -p reaches the run; the bundle says how to attach the notebook; `drifting attach` attaches it."
    nb = cleaned_nb; out = tmp_path / "out.ipynb"
    cmd = [str(BIN / "papermill"), str(nb), str(out), "-p", "steps", "3", "-p", "runs_dir", str(tmp_path / "runs"),
           "-p", "code_root", str(repo), "--log-level", "WARNING"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env_with_secrets(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (d,) = (tmp_path / "runs" / "fixture").iterdir()
    m = json.loads((d / "run_manifest.json").read_text())
    assert m["status"] == "completed" and m["notebook"] is None
    assert "steps: 3" in (d / "config_resolved.yaml").read_text()  # -p really reached the run
    assert len(json.loads((d / "metrics.json").read_text())["series"]["loss"]) == 3
    assert "drifting attach" in (d / "RUN.md").read_text() and "without `drifting run`" in m["command"]
    r = subprocess.run([str(BIN / "drifting"), "attach", str(out), str(d)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads((d / "run_manifest.json").read_text())
    assert m["notebook"]["kind"] == "copy" and m["notebook"]["input"] == str(out)
    # the bundle's notebook is the final one: it holds the output of the cell after run.finish()
    assert "after-finish marker 3" in (d / "notebook.ipynb").read_text()
    assert validate_bundle(d) == []
    for name, data in all_bundle_bytes(d):
        for s in SECRETS.values(): assert s.encode() not in data, (name, s)


def test_drifting_run_cli_failing_notebook(repo, tmp_path, cleaned_nb):
    nb = cleaned_nb
    cmd = [str(BIN / "drifting"), "run", str(nb), "-p", "steps", "4", "-p", "fail_at", "2",
           "-p", "runs_dir", str(tmp_path / "runs"), "-p", "code_root", str(repo), "--log-level", "WARNING"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env_with_secrets(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    (d,) = (tmp_path / "runs" / "fixture").iterdir()
    m = json.loads((d / "run_manifest.json").read_text())
    assert m["status"] == "failed" and m["error"]["message"] == "diverged at step 2"
    assert m["command"].startswith("drifting run ") and "-p fail_at 2" in m["command"]
    nbf = d / "notebook.ipynb"
    assert nbf.is_file() and not nbf.is_symlink() and m["notebook"]["kind"] == "copy" and m["notebook"]["output"] is None
    assert m["notebook"]["input"] == str(nb.resolve()) and json.loads(nbf.read_text())["metadata"]["papermill"]["parameters"]["bundle"] == str(d)
    assert "diverged at step 2" in nbf.read_text()
    assert validate_bundle(d) == []
    ev = [json.loads(l)["event"] for l in (d / "provenance/events.jsonl").read_text().splitlines()]
    assert ev[0] == "start" and "failure" in ev and ev[-1] == "notebook"
    assert torch.load(d / "artifacts/checkpoints/last.pt", weights_only=True)["step"] == 1


SCRIPT = """
import sys
from drifting.provenance import start_run
run = start_run("script", {"a": 1}, code_root=sys.argv[1], runs_dir=sys.argv[2], smoke=False)
run.log_metrics(1, loss=0.5)
if sys.argv[3] == "raise": raise KeyError("missing batch")
"""


@pytest.mark.parametrize("mode,status", [("raise", "failed"), ("exit", "aborted")])
def test_plain_script_failure_and_abort(repo, tmp_path, mode, status):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(repo), str(tmp_path / "runs"), mode], capture_output=True, text=True, timeout=300)
    assert (r.returncode != 0) == (mode == "raise") and ("KeyError" in r.stderr) == (mode == "raise")  # still reported as usual
    (d,) = (tmp_path / "runs" / "script").iterdir()
    m = json.loads((d / "run_manifest.json").read_text())
    assert m["status"] == status and validate_bundle(d) == []
    assert "python" in m["command"] and "-c" in m["command"]
