"""Fault catalogue, liveness that is proven, never guessed (issue 23, item 3). A `running` bundle whose writer cannot
be proven dead — another PID namespace (containers with host networking, Slurm enroot/pyxis, Kubernetes
hostNetwork), another boot, another host, `hidepid`, an older record — is reported "unknown — may be alive": neither
`validate`, `drifting validate` nor the next `start_run` writes or deletes anything in it (a live writer's
checkpoint temp file survives). A proven-dead writer (its PID gone, or reused by a process that started at another
time) is reported, and closed only by `drifting validate --close-stale` or the next start. Another user's unreadable
bundle is skipped with a warning. Every case ends with `settled`."""
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

import drifting.lifecycle as life
import drifting.writers as wr
from drifting.bundle import validate_bundle
from drifting.cli import main
from drifting.lifecycle import close_stale
from _faults import earlier, manifest, quick_run, settled, snapshot, tiny_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tiny_repo(tmp_path_factory.mktemp("repo"))


def _dead_pid() -> int:
    q = subprocess.Popen([sys.executable, "-c", "pass"]); q.wait(); return q.pid


def _left_running(repo, runs, **writer) -> Path:
    "A bundle its writer left `running` (a checkpoint, a half-written temp file), its writer record edited."
    run = quick_run(repo, runs); run.save_checkpoint({"w": torch.ones(2)}, step=1)
    for undo in run._hooks: undo()
    run._hooks = []
    (run.dir / "artifacts/checkpoints/.step_2.pt.123.tmp").write_bytes(b"a live writer's next save")
    m = manifest(run.dir); m["writer"].update(writer)
    (run.dir / "run_manifest.json").write_text(json.dumps(m))
    return run.dir


UNPROVEN = {
    "other_pid_namespace": lambda: dict(pid=_dead_pid(), pid_ns="pid:[4026999999]"),
    "other_boot": lambda: dict(pid=_dead_pid(), boot_id="00000000-0000-0000-0000-000000000000"),
    "other_host": lambda: dict(pid=_dead_pid(), host="node-17.cluster"),
    "older_record": lambda: dict(pid=_dead_pid(), boot_id=None, pid_ns=None, start_ticks=None, create_time=1.0),
    "no_start_time": lambda: dict(pid=_dead_pid(), start_ticks=None),
}


@pytest.mark.parametrize("how", ["validate", "cli_validate", "next_start", "close_stale"])
@pytest.mark.parametrize("case", list(UNPROVEN))
def test_unproven_death_changes_nothing(repo, tmp_path, capsys, case, how):
    "A writer that cannot be proven dead: reported as unknown, nothing closed, nothing deleted."
    runs = tmp_path / "runs"; before = earlier(repo, runs)
    d = _left_running(repo, runs, **UNPROVEN[case]()); snap = snapshot(d)
    if how == "validate":
        assert validate_bundle(d) == []
    elif how == "cli_validate":
        main(["validate", "--close-stale", str(d)])
        assert "unknown — may be alive" in capsys.readouterr().out
    elif how == "next_start":
        quick_run(repo, runs).finish()
    else:
        assert close_stale(d) is None
    assert snapshot(d) == snap and manifest(d)["status"] == "running"
    assert (d / "artifacts/checkpoints/.step_2.pt.123.tmp").read_bytes() == b"a live writer's next save"
    settled(runs, before)


@pytest.mark.parametrize("how", ["validate", "next_start"])
def test_pid_hidden_by_hidepid_is_unknown(repo, tmp_path, monkeypatch, how):
    "Another user's process under /proc hidepid looks absent: unknown, not dead."
    runs = tmp_path / "runs"; before = earlier(repo, runs)
    d = _left_running(repo, runs, pid=_dead_pid(), uid=os.getuid() + 1); snap = snapshot(d)
    monkeypatch.setattr(wr, "_proc_hides_others", lambda: True)
    assert wr.writer_state(manifest(d))[0] == "unknown"
    if how == "validate":
        assert validate_bundle(d) == []
    else:
        quick_run(repo, runs).finish()
    assert snapshot(d) == snap
    settled(runs, before)


def test_unreadable_proc_entry_is_unknown(repo, tmp_path, monkeypatch):
    "A /proc entry this user may not read (hidepid=1): unknown."
    runs = tmp_path / "runs"; before = earlier(repo, runs); d = _left_running(repo, runs); snap = snapshot(d)
    monkeypatch.setattr(wr, "_start_ticks", lambda pid: "hidden")
    assert wr.writer_state(manifest(d))[0] == "unknown" and close_stale(d) is None and snapshot(d) == snap
    settled(runs, before)


PROVEN = {
    "pid_gone": lambda: dict(pid=_dead_pid()),
    "pid_reused": lambda: dict(pid=os.getpid(), start_ticks=wr.writer_record()["start_ticks"] - 1),
}


@pytest.mark.parametrize("case", list(PROVEN))
def test_proven_dead_is_reported_and_validate_writes_nothing(repo, tmp_path, capsys, case):
    "A proven-dead writer: validate reports it and writes nothing; `--close-stale` closes it, checkpoints kept."
    runs = tmp_path / "runs"; before = earlier(repo, runs)
    d = _left_running(repo, runs, **PROVEN[case]()); snap = snapshot(d)
    assert any("proven dead" in p for p in validate_bundle(d))
    assert main(["validate", str(d)]) == 1 and snapshot(d) == snap and "writer: proven dead" in capsys.readouterr().out
    ck = (d / "artifacts/checkpoints/step_1.pt").read_bytes()
    assert main(["validate", "--close-stale", str(d)]) == 0
    m = manifest(d)
    assert m["status"] == "crashed" and m["last_checkpoint"] == "artifacts/checkpoints/step_1.pt"
    assert (d / "artifacts/checkpoints/step_1.pt").read_bytes() == ck and not list(d.rglob(".*.tmp"))
    settled(runs, before)


@pytest.mark.parametrize("case", list(PROVEN))
def test_proven_dead_is_closed_by_the_next_start(repo, tmp_path, case):
    runs = tmp_path / "runs"; before = earlier(repo, runs); d = _left_running(repo, runs, **PROVEN[case]())
    quick_run(repo, runs).finish()
    assert manifest(d)["status"] == "crashed" and validate_bundle(d) == []
    settled(runs, before)


def test_writer_record_holds_the_proofs(repo, tmp_path):
    "start_run records boot id, PID namespace, PID start time, user and host (Linux)."
    runs = tmp_path / "runs"; before = earlier(repo, runs); run = quick_run(repo, runs).finish()
    w = manifest(run.dir)["writer"]
    assert w["pid"] == os.getpid() and w["host"] and w["uid"] == os.getuid()
    if Path("/proc/self/stat").exists():
        assert w["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        assert w["pid_ns"] == os.readlink("/proc/self/ns/pid") and isinstance(w["start_ticks"], int)
    settled(runs, before)


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), ValueError("Expecting value")])
def test_unreadable_bundle_of_another_user_is_skipped(repo, tmp_path, monkeypatch, error):
    "Another user's bundle (unreadable) or a damaged one in a shared runs folder: skipped with a warning, start works."
    runs = tmp_path / "runs"; before = earlier(repo, runs)
    other = _left_running(repo, runs, pid=_dead_pid()); snap = snapshot(other)
    real = life.read_manifest
    monkeypatch.setattr(life, "read_manifest", lambda b: (_ for _ in ()).throw(error) if Path(b) == other else real(b))
    with pytest.warns(UserWarning, match="skipped"):
        run = quick_run(repo, runs).finish()
    assert manifest(run.dir)["status"] == "completed" and snapshot(other) == snap
    settled(runs, before)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_really_unreadable_bundle_is_skipped(repo, tmp_path):
    runs = tmp_path / "runs"; before = earlier(repo, runs); other = _left_running(repo, runs, pid=_dead_pid())
    (other / "run_manifest.json").chmod(0)
    try:
        with pytest.warns(UserWarning, match="skipped"):
            quick_run(repo, runs).finish()
    finally:
        (other / "run_manifest.json").chmod(0o644)
    settled(runs, before)
