"""Fault catalogue, crashes and full disks (issue 12, items 5 and 10): kill -9 and SIGTERM during training, SIGTERM
outside the loop, an exception or a full disk inside start_run, a full disk while recording a failure, a run left
`running` by a dead process, a partial last line, leftover temp files. No bundle may lie about its state: whoever
notices the death (`drifting validate`, the next start) closes it as `crashed`, naming the last step and checkpoint."""
import errno, json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

import drifting.lifecycle as life
import drifting.provenance as prov
import drifting.writers as wr
from drifting.bundle import validate_bundle
from drifting.cli import main
from drifting.provenance import BundleError, close_stale, start_run
from _faults import audit, events, kw, manifest, quick_run, snapshot, tiny_repo

TESTS = Path(__file__).resolve().parent

TRAIN = """
import sys, time
sys.path.insert(0, sys.argv[3])
from _tiny_trainer import tiny_trainer
from drifting.provenance import start_run
run = start_run("toy", {"seed": 0}, code_root=sys.argv[1], package="pkg", smoke=False, runs_dir=sys.argv[2])
t = tiny_trainer()
def slow(trainer, m):
    time.sleep(0.05)
    if m["step"] == 3: print("step3", run.dir, flush=True)
t.fit(100000, run=run, ckpt_every=2, progress=False, callback=slow)
"""

KILLED = """
import sys, time, json, torch
from drifting.provenance import start_run
run = start_run("toy", {"seed": 0}, code_root=sys.argv[1], package="pkg", smoke=False, runs_dir=sys.argv[2])
log = open(run.path("logs", "steps.jsonl"), "a")
for step in range(1, 4):  # what Trainer.fit writes: a line per step, a checkpoint every 2 steps
    log.write(json.dumps(dict(step=step, loss=1.0 / step)) + "\\n"); log.flush()
    if step % 2 == 0: run.save_checkpoint({"w": torch.full((8,), float(step)), "step": step}, step=step)
print("step3", run.dir, flush=True)
time.sleep(120)
"""

IDLE = """
import sys, time
from drifting.provenance import start_run
run = start_run("toy", {"seed": 0}, code_root=sys.argv[1], package="pkg", smoke=False, runs_dir=sys.argv[2])
print("started", run.dir, flush=True)
time.sleep(120)
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tiny_repo(tmp_path_factory.mktemp("repo"))


def _launch(script, repo, runs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-c", script, str(repo), str(runs), str(TESTS)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    for line in p.stdout:  # start_run's own line first, then the script's marker
        if line.split()[0] in ("step3", "started"): return p, Path(line.split()[1])
    raise AssertionError(p.stderr.read())


def test_kill9_during_training_is_closed_as_crashed_by_validate(repo, tmp_path, capsys):
    "SIGKILL mid-training: validate reports the writer proven dead and writes nothing; `--close-stale` closes it."
    p, d = _launch(KILLED, repo, tmp_path / "runs")
    os.kill(p.pid, signal.SIGKILL); p.wait(timeout=30)
    (d / "artifacts/checkpoints/.step_9.pt.123.tmp").write_bytes(b"half")  # what a kill during a write leaves
    ck = {p_.name: p_.read_bytes() for p_ in (d / "artifacts/checkpoints").glob("*.pt")}
    assert manifest(d)["status"] == "running" and "step_2.pt" in ck
    probs = validate_bundle(d)
    assert any("status is 'running' but its writer is proven dead" in x for x in probs), probs
    before = snapshot(d)
    assert main(["validate", str(d)]) == 1 and snapshot(d) == before  # reports only: nothing written
    assert "writer: proven dead" in capsys.readouterr().out
    assert main(["validate", "--close-stale", str(d)]) == 0
    out = capsys.readouterr().out
    assert "closed a stale run as crashed" in out and "valid; status crashed" in out
    m = manifest(d)
    assert m["status"] == "crashed" and m["last_checkpoint"] == "artifacts/checkpoints/step_2.pt" and m["last_step"] == 3
    assert "last checkpoint" in m["error"]["message"] and "resume from this bundle" in m["error"]["message"]
    assert not list(d.rglob(".*.tmp")) and "crashed" in (d / "RUN.md").read_text()
    assert {p_.name: p_.read_bytes() for p_ in (d / "artifacts/checkpoints").glob("*.pt")} == ck
    assert validate_bundle(d) == [] and events(d)[-1]["event"] == "failure"
    audit(d)


@pytest.mark.slow  # a trainer in a subprocess: ~15 s on an idle 2-core machine
def test_sigterm_during_training_checkpoints_then_fails(repo, tmp_path):
    "item 5: SIGTERM (docker stop) in the training loop: a checkpoint of the current step, then status failed."
    p, d = _launch(TRAIN, repo, tmp_path / "runs")
    os.kill(p.pid, signal.SIGTERM); p.wait(timeout=60)
    assert p.returncode != 0
    m = manifest(d); last = [e for e in events(d) if e["event"] == "checkpoint"][-1]
    assert m["status"] == "failed" and "terminated by SIGTERM at step" in m["error"]["message"], m["error"]
    assert f"step_{last['step']}.pt written" in m["error"]["message"] and last["step"] >= 3
    sd = torch.load(d / "artifacts/checkpoints/last.pt", weights_only=True)
    assert sd["step"] == last["step"] and validate_bundle(d) == []
    audit(d)


def test_sigterm_outside_the_loop(repo, tmp_path):
    p, d = _launch(IDLE, repo, tmp_path / "runs")
    os.kill(p.pid, signal.SIGTERM); p.wait(timeout=30)
    assert p.returncode == -signal.SIGTERM  # it still dies of the signal, after recording it
    m = manifest(d)
    assert m["status"] == "failed" and "terminated by SIGTERM" in m["error"]["message"] and validate_bundle(d) == []


def _dead_pid() -> int:
    q = subprocess.Popen([sys.executable, "-c", "pass"]); q.wait(); return q.pid


def _fake_dead_writer(d: Path):
    m = manifest(d); m["writer"]["pid"] = _dead_pid()
    (d / "run_manifest.json").write_text(json.dumps(m))


def test_next_start_closes_a_stale_run(repo, tmp_path):
    "item 5: a bundle left `running` by a dead process is closed as crashed by the next start of that project."
    runs = tmp_path / "runs"; a = quick_run(repo, runs); a.save_checkpoint({"w": torch.ones(2)}, step=5)
    a._hooks = []; _fake_dead_writer(a.dir)  # as if the process had been killed
    (a.dir / "logs").mkdir(exist_ok=True)
    (a.dir / "logs/steps.jsonl").write_text('{"step": 5, "loss": 1.0}\n{"step": 6, "lo')  # a line cut by the kill
    ck = (a.dir / "artifacts/checkpoints/step_5.pt").read_bytes()
    b = quick_run(repo, runs).finish()
    m = manifest(a.dir)
    assert m["status"] == "crashed" and m["last_step"] == 5 and m["last_checkpoint"] == "artifacts/checkpoints/step_5.pt"
    assert (a.dir / "artifacts/checkpoints/step_5.pt").read_bytes() == ck
    assert validate_bundle(a.dir) == [] and validate_bundle(b.dir) == []
    audit(runs)


def test_live_run_is_not_closed(repo, tmp_path):
    "A `running` bundle whose writer is alive (this process) is left alone by validate and by the next start."
    runs = tmp_path / "runs"; a = quick_run(repo, runs)
    assert close_stale(a.dir) is None and validate_bundle(a.dir) == []
    quick_run(repo, runs).finish()
    assert manifest(a.dir)["status"] == "running"; a.finish()


def test_partial_last_event_line_is_tolerated(repo, tmp_path):
    "item 10: an events line cut short by a kill: the fragment (never complete) is dropped when the run is closed."
    a = quick_run(repo, tmp_path / "runs"); a._hooks = []; _fake_dead_writer(a.dir)
    whole = (a.dir / "provenance/events.jsonl").read_bytes()
    with open(a.dir / "provenance/events.jsonl", "a") as f: f.write('{"time": "2026-12-05T00:00:00Z", "event": "chec')
    assert prov.read_events(a.dir)[-1]["event"] == "start"  # the reader skips it
    assert close_stale(a.dir)["status"] == "crashed"
    data = (a.dir / "provenance/events.jsonl").read_bytes()
    assert data.startswith(whole) and json.loads(data.splitlines()[-1])["event"] == "failure"
    assert validate_bundle(a.dir) == []; audit(a.dir)


def test_exception_inside_start_run_leaves_no_half_bundle(repo, tmp_path, monkeypatch):
    "item 5: an exception inside start_run after the folder exists removes the folder; earlier bundles unchanged."
    runs = tmp_path / "runs"; a = quick_run(repo, runs).finish(); before = snapshot(runs)
    def boom(*a, **k): raise RuntimeError("boom while writing RUN.md")
    monkeypatch.setattr(life, "run_md", boom)
    with pytest.raises(RuntimeError, match="boom"): quick_run(repo, runs)
    assert snapshot(runs) == before


def _enospc_on(monkeypatch, names):
    real = wr.atomic_write_text
    def hook(path, text):
        if Path(path).name in names: raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)
    monkeypatch.setattr(wr, "atomic_write_text", hook)


def test_disk_full_in_start_run(repo, tmp_path, monkeypatch):
    "item 10: ENOSPC while start_run writes: a clear message, no half bundle, earlier bundles byte-identical."
    runs = tmp_path / "runs"; quick_run(repo, runs).finish(); before = snapshot(runs)
    _enospc_on(monkeypatch, {"repro.json"})
    with pytest.raises(BundleError, match="is full: no run bundle was kept"): quick_run(repo, runs)
    assert snapshot(runs) == before


def test_disk_full_while_recording_a_failure(repo, tmp_path, monkeypatch):
    "item 10: ENOSPC in fail(): the manifest (written first, into the freed reserve) still says failed."
    run = quick_run(repo, tmp_path / "runs")
    assert (run.dir / prov.RESERVE).stat().st_size == 1 << 16
    _enospc_on(monkeypatch, {"metrics.json", "RUN.md"})
    real_write = os.write
    monkeypatch.setattr(wr.os, "write", lambda fd, b: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    run.fail(RuntimeError("diverged"))
    monkeypatch.setattr(wr.os, "write", real_write)
    m = manifest(run.dir)
    assert m["status"] == "failed" and m["error"]["message"] == "diverged" and m["disk_full"] is True
    assert not (run.dir / prov.RESERVE).exists()
    audit(run.dir)


def test_metrics_json_is_not_rewritten_every_step(repo, tmp_path, monkeypatch):
    "item 10: 500 logged points write metrics.json a handful of times, not 500 (quadratic over a long run)."
    run = quick_run(repo, tmp_path / "runs"); n = []
    real = wr.atomic_write_text
    monkeypatch.setattr(wr, "atomic_write_text", lambda p, t: (n.append(Path(p).name), real(p, t))[1])
    for s in range(500): run.log_metrics(step=s, loss=1.0 / (s + 1))
    run.finish()
    assert n.count("metrics.json") <= 3
    assert len(json.loads((run.dir / "metrics.json").read_text())["series"]["loss"]) == 500


def test_concurrent_runs_get_their_own_folders(repo, tmp_path):
    "Two runs started in the same second share no folder; each bundle is complete and valid."
    runs = tmp_path / "runs"; a, b = quick_run(repo, runs), quick_run(repo, runs)
    assert a.dir != b.dir and a.dir.parent == b.dir.parent
    a.finish(); b.finish(); assert validate_bundle(a.dir) == [] == validate_bundle(b.dir); audit(runs)


def test_atomic_write_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    "item 10: after the atomic rename the folder is fsynced too (else the rename may not survive a power cut)."
    import stat
    import drifting.core as core
    seen, real = [], os.fsync
    monkeypatch.setattr(core.os, "fsync", lambda fd: (seen.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real(fd))[1])
    core.atomic_write_text(tmp_path / "a.txt", "x")
    assert seen == [False, True] and (tmp_path / "a.txt").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temp file left


@pytest.mark.slow  # one papermill kernel: ~10 s on an idle 2-core machine
def test_drifting_run_closes_the_bundle_of_a_killed_kernel(repo, tmp_path, capsys):
    "item 5: the kernel dies by SIGKILL (as under OOM) after start_run: `drifting run` closes the bundle as crashed."
    import nbformat
    from drifting.cli import run_notebook
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("runs_dir = None\nbundle = None", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(f"import os, signal\nfrom drifting.provenance import start_run\n"
                                          f"run = start_run('toy', {{'seed': 0}}, code_root={str(repo)!r}, package='pkg', smoke=False, runs_dir=runs_dir, bundle=bundle)\n"
                                          "run.log_metrics(step=1, loss=1.0)\nos.kill(os.getpid(), signal.SIGKILL)")]
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    nbformat.write(nb, tmp_path / "killer.ipynb")
    rc, bundles = run_notebook(str(tmp_path / "killer.ipynb"), None, ["-p", "runs_dir", str(tmp_path / "runs")])
    assert rc != 0 and len(bundles) == 1
    m = manifest(bundles[0])
    assert m["status"] == "crashed" and "papermill exit code" in m["error"]["message"], m
    assert "closed as crashed" in capsys.readouterr().err and validate_bundle(bundles[0]) == []
    audit(bundles[0])
