"""The rehearsal of the paper's job (bench/rehearsal.py --small): every stage runs as on a cluster, the killed
stages resume, and the evaluation of the last checkpoints records the imported reference statistics it used."""

import hashlib, json, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_small_rehearsal_runs_every_stage(tmp_path):
    out = tmp_path / "rehearsal.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rehearsal.py"), "--small", "--work", str(tmp_path / "w"), "--json",
         str(out)],
        capture_output=True, text=True, timeout=1200,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    rc = {s["stage"]: s["rc"] for s in res["stages"]}
    assert rc["latent export (killed)"] == rc["MAE pre-training (killed)"] == -9  # SIGKILLed mid-stage
    assert all(v == 0 for k, v in rc.items() if "killed" not in k), rc
    work = tmp_path / "w"
    cache = json.loads((work / "latents" / "manifest.json").read_text())
    assert cache["complete"] and cache["count"] == res["classes"] * res["per_class"]
    ev = Path(res["eval_bundle"])
    scalars = json.loads((ev / "metrics.json").read_text())["scalars"]
    assert scalars["metric_net"].startswith("random-conv-rehearsal")  # named as what it is: not a quality metric
    assert len(scalars["checkpoints_evaluated"].split(",")) == 2  # last:2
    assert scalars["best_checkpoint_step"] in {int(s) for s in scalars["checkpoints_evaluated"].split(",")}
    ref = json.loads((ev / "artifacts" / "eval.json").read_text())["protocol"]["reference"]
    sha = hashlib.sha256((work / "VIRTUAL_rehearsal_ref.npz").read_bytes()).hexdigest()
    assert sha in json.dumps(ref) and ref["asserted_protocol"].startswith("rehearsal")
    mae_link = work / "mae_latest"
    assert mae_link.is_symlink() and (mae_link / "encoder").is_dir()  # the pointer names the resumed run's export
