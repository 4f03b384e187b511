"""#24 item 6: a torchrun job that names its bundle (`--bundle DIR`), its rank 0 (the bundle's writer) killed with
SIGKILL mid-run (torchrun then stops the other rank and exits) and started again with the same command, continues
from the bundle's newest good checkpoint (not the job folder's older resume.pt) and equals the uninterrupted job step
by step: the loss of every logged step identical, the final weights, EMA and optimiser state bit-identical (one torch
thread per rank, pinned by the environment). Rank 0 closes the bundle: completed at the end, and the kill is recorded
as `crashed` before the relaunch reopens it; an exception in the loop closes it as `failed`, and a relaunch
completes it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _dist_workers import trainer
from drifting.bundle import validate_bundle
from drifting.distributed import save_job
from drifting.provenance import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TESTS, ROOT = Path(__file__).resolve().parent, Path(__file__).resolve().parents[1]
STEPS = 8


def torchrun(job, bundle, *more):
    "Start the command a Slurm requeue repeats (2 gloo ranks, one torch thread each); `.communicate()` waits for it."
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "drifting.distributed", str(job), "--steps", str(STEPS), "--bundle", str(bundle), "--ckpt-every", "2",
           "--project", "dist", *more]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait(p):
    out, err = p.communicate(timeout=300)
    return p.returncode, err


def steps_log(b):
    return [json.loads(line) for line in (b / "logs" / "steps.jsonl").read_text().splitlines()]


def events(b):
    return [json.loads(line) for line in (b / "provenance" / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    "A job folder whose trainer is at step 2: its resume.pt is what a relaunch must NOT go back to."
    torch.set_num_threads(1)
    t = trainer(); t.fit(2, progress=False)
    return save_job(tmp_path_factory.mktemp("job") / "job", t)


@pytest.mark.slow  # three torchrun launches of 2 gloo ranks: 107 s measured at load average 13 on 2 cores
def test_killed_and_relaunched_equals_uninterrupted(job, tmp_path):
    ref, b = tmp_path / "ref", tmp_path / "requeued"
    p_ref, p_b = torchrun(job, ref), torchrun(job, b, "--callback", "_kill_workers:kill_rank0_at_5")  # side by side
    (rc, err), (rc_b, err_b) = wait(p_ref), wait(p_b)
    assert rc == 0, err[-3000:]
    assert rc_b != 0 and "Signal 9 (SIGKILL)" in err_b, (rc_b, err_b[-3000:])
    man = json.loads((b / "run_manifest.json").read_text())
    assert man["status"] == "running" and [s["step"] for s in steps_log(b)] == [3, 4, 5]  # killed after step 5
    assert load_checkpoint(b)["step"] == 4
    rc, err = wait(torchrun(job, b))  # the requeue: the same command
    assert rc == 0, err[-3000:]
    man = json.loads((b / "run_manifest.json").read_text())
    assert man["status"] == "completed" and man["error"] is None and man["world_size"] == 2
    assert [x["previous"]["status"] for x in man["relaunches"]] == ["crashed"]
    ev = events(b)
    kinds = [e["event"] for e in ev]
    assert kinds.index("failure") < kinds.index("relaunch") < kinds.index("end") == len(kinds) - 1
    (res,) = [e for e in ev if e["event"] == "resume" and e.get("relaunch")]
    assert res["step"] == 4 and res["from"].endswith("step_4.pt")  # the bundle's newest, not the job's resume.pt (2)
    # step by step: every logged step of the killed and the relaunched launches has the uninterrupted loss, exactly
    want = {s["step"]: s["loss"] for s in steps_log(ref)}
    got = steps_log(b)
    assert [s["step"] for s in got] == [3, 4, 5, 5, 6, 7, 8] and sorted(want) == list(range(3, STEPS + 1))
    assert all(s["loss"] == want[s["step"]] for s in got), [(s["step"], s["loss"], want[s["step"]]) for s in got]
    a, c = load_checkpoint(ref), load_checkpoint(b)
    assert a["step"] == c["step"] == STEPS
    for k in ("model", "ema"):
        assert a[k].keys() == c[k].keys() and all(torch.equal(a[k][n], c[k][n]) for n in a[k]), k
    sa, sc = a["optimizer"]["state"], c["optimizer"]["state"]
    assert all(torch.equal(sa[i][n], sc[i][n]) for i in sa for n in sa[i])
    assert validate_bundle(b) == [] and validate_bundle(ref) == []


@pytest.mark.slow  # two launches of 2 gloo ranks through torch's elastic launcher
def test_a_failing_job_closes_its_bundle_as_failed_and_a_relaunch_completes_it(tmp_path):
    "An exception in rank 0's loop: the bundle is closed as failed (with the error); the relaunch continues from step 2."
    from drifting.distributed import WorkerFailed, fit_worker, launch
    b = tmp_path / "b"
    job = dict(build="_dist_workers:trainer", steps=4, bundle=str(b), own_bundle=True, project="dist", ckpt_every=2)
    with pytest.raises(WorkerFailed):
        launch(fit_worker, 2, dict(job, callback="_kill_workers:raise_at_3"))
    man = json.loads((b / "run_manifest.json").read_text())
    assert man["status"] == "failed" and "planted failure after step 3" in man["error"]["message"]
    assert load_checkpoint(b)["step"] == 2
    (r0, _) = launch(fit_worker, 2, job)
    man = json.loads((b / "run_manifest.json").read_text())
    assert man["status"] == "completed" and [x["previous"]["status"] for x in man["relaunches"]] == ["failed"]
    assert r0["hist"]["step"] == [3, 4] and load_checkpoint(b)["step"] == 4 and validate_bundle(b) == []
