"""#24 item 5: MAE pre-training resumes exactly. A run killed with SIGKILL mid-run (after its step-4 checkpoint) and
resumed from its bundle in a new process ends with the uninterrupted run's weights, EMA and optimiser state to the bit
(one torch thread, pinned in every process), and logs the same loss at every step. Through the run notebook: the
encoder export lives in the bundle with its sha256, a resumed run exports the same bytes, and `out_dir` is only a
link to the newest run's export; a real folder there is refused before any work."""
import json
import os
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest
import torch

from _faults import tiny_repo
from drifting.bundle import validate_bundle
from drifting.mae import load_encoder
from drifting.mae_resume import encoder_sha256
from drifting.provenance import load_checkpoint

NB = Path(__file__).resolve().parents[1] / "nbs" / "run_mae.ipynb"
STEPS = 8

TRAIN = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from drifting.data import ImageDataset
from drifting.mae import mae_config
from drifting.mae_resume import MAETrainer
from drifting.mae_train import MAETrainConfig
from drifting.provenance import start_run
from drifting.streams import DataStream
repo, runs, mode = sys.argv[1], sys.argv[2], sys.argv[3]
g = torch.Generator().manual_seed(0)
ds = ImageDataset(torch.randn(64, 4, 8, 8, generator=g), torch.arange(64) % 4, list("abcd"), "rand", "fp-rand")
t = MAETrainer(mae_config("tiny", in_channels=4, num_classes=4),
               MAETrainConfig(warmup=3, ema_decay=0.9, finetune_last_steps=3, finetune_warmup=2),
               DataStream(ds, 8, seed=0), STEPS, seed=0, device="cpu")
resume = sys.argv[4] if mode == "resume" else None
run = start_run("mae", {"seed": 0}, code_root=repo, package="pkg", smoke=False, runs_dir=runs, resume_from=resume)
if resume:
    t.load_state_dict(run.resume_state)
def kill_at_5(trainer, m):  # after step 5 (the step-4 checkpoint is written): SIGKILL, nothing runs after it
    if mode == "killed" and m["step"] == 5:
        os.kill(os.getpid(), signal.SIGKILL)
t.fit(run, ckpt_every=2, progress=False, callback=kill_at_5)
run.finish()
print("bundle", run.dir)
""".replace("STEPS", str(STEPS))


def start(repo, runs, mode, resume=""):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", TRAIN, str(repo), str(runs), mode, str(resume)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def steps_log(b):
    return [json.loads(x) for x in (b / "logs" / "steps.jsonl").read_text().splitlines()]


def test_kill9_then_resume_equals_uninterrupted(tmp_path):
    repo = tiny_repo(tmp_path / "repo")
    ref, killed = start(repo, tmp_path / "ref", "whole"), start(repo, tmp_path / "runs", "killed")  # side by side
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    a = Path(out.split()[-1])
    killed.communicate(timeout=300)
    assert killed.returncode == -9
    (k,) = (tmp_path / "runs" / "mae").iterdir()
    assert json.loads((k / "run_manifest.json").read_text())["status"] == "running"
    assert [s["step"] for s in steps_log(k)] == [1, 2, 3, 4, 5] and load_checkpoint(k)["step"] == 4
    res = start(repo, tmp_path / "runs", "resume", k)  # a new process: the next run of the project closes `k`
    out, err = res.communicate(timeout=300)
    assert res.returncode == 0, err[-3000:]
    b = Path(out.split()[-1])
    assert json.loads((k / "run_manifest.json").read_text())["status"] == "crashed"
    man = json.loads((b / "run_manifest.json").read_text())
    assert man["status"] == "completed" and man["resume_from"]["step"] == 4
    want = {s["step"]: s["loss"] for s in steps_log(a)}
    got = steps_log(k) + steps_log(b)  # steps 1..5 before the kill, 5..8 after the resume
    assert [s["step"] for s in got] == [1, 2, 3, 4, 5, 5, 6, 7, 8] and sorted(want) == list(range(1, STEPS + 1))
    assert all(s["loss"] == want[s["step"]] for s in got), [(s["step"], s["loss"], want[s["step"]]) for s in got]
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert sa["step"] == sb["step"] == STEPS
    for key in ("model", "ema"):
        assert sa[key].keys() == sb[key].keys() and all(torch.equal(sa[key][n], sb[key][n]) for n in sa[key]), key
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert oa.keys() == ob.keys() and all(torch.equal(oa[i][n], ob[i][n]) for i in oa for n in oa[i])
    assert all(validate_bundle(x) == [] for x in (a, k, b))


TINY = dict(preset="tiny", batch_size=8, warmup=2, finetune_last_steps=2, finetune_warmup=1, num_threads=1,
            progress=False, vae=None, input_patch=4, steps=4, ckpt_every=2, keep_checkpoints=None)


def run_nb(tmp_path, name, **params):
    pm.execute_notebook(str(NB), str(tmp_path / f"{name}.ipynb"), cwd=str(tmp_path), progress_bar=False,
                        parameters=dict(TINY, out_dir=str(tmp_path / "latest"), runs_dir=str(tmp_path / "runs")) | params)
    return json.loads((tmp_path / f"{name}.ipynb").read_text())


def test_run_mae_exports_into_its_bundle_and_resumes(tmp_path):
    run_nb(tmp_path, "whole")
    (a,) = (tmp_path / "runs" / "mae").iterdir()
    latest = tmp_path / "latest"
    assert latest.is_symlink() and latest.resolve() == (a / "artifacts" / "mae").resolve()
    assert not Path(os.readlink(latest)).is_absolute()  # relative: the runs folder can move with it
    enc = [e for e in map(json.loads, (a / "provenance" / "events.jsonl").read_text().splitlines())
           if e["event"] == "encoder"]
    assert enc[-1]["path"] == "artifacts/mae/encoder" and enc[-1]["sha256"] == encoder_sha256(latest / "encoder")
    m = json.loads((latest / "metrics.json").read_text())
    assert m["encoder_sha256"] == enc[-1]["sha256"] and m["step_per_step"] == [1, 2, 3, 4]
    # a run resumed from the uninterrupted run's step-2 checkpoint ends with the same encoder, byte for byte
    run_nb(tmp_path, "resumed", resume=str(a / "artifacts" / "checkpoints" / "step_2.pt"))
    (b,) = [x for x in (tmp_path / "runs" / "mae").iterdir() if x != a]
    assert latest.resolve() == (b / "artifacts" / "mae").resolve()  # the pointer moved; the first export is intact
    assert encoder_sha256(b / "artifacts/mae/encoder") == encoder_sha256(a / "artifacts/mae/encoder") == enc[-1]["sha256"]
    mb = json.loads((latest / "metrics.json").read_text())
    assert mb["resumed_from_step"] == 2 and mb["step_per_step"] == [3, 4] and mb["loss_per_step"] == m["loss_per_step"][2:]
    assert all(validate_bundle(x) == [] for x in (a, b))
    load_encoder(latest / "encoder", expect=dict(in_channels=1, width=8, input_patch=4))
    # a real folder where the link goes is refused before any work, and left as it was
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("mine")
    with pytest.raises(pm.PapermillExecutionError, match="not a link to a run bundle's export"):
        run_nb(tmp_path, "refused", out_dir=str(tmp_path / "old"))
    assert (tmp_path / "old" / "keep.txt").read_text() == "mine" and len(list((tmp_path / "runs" / "mae").iterdir())) == 2
