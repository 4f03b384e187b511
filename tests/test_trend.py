"""Checkpoint trends and the resume options (issue 24, item 4): `keep_every` keeps the step files a trend needs,
`run_eval -p checkpoints` evaluates them into one table and figure and records the best checkpoint, and each resume
option (fresh optimiser, restarted warm-up, new or scaled peak rate) does what it says, is recorded, and travels with
later checkpoints, while the plain resume stays exact."""
import dataclasses, json, os, subprocess, sys
from pathlib import Path

import papermill as pm
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_trainer import tiny_trainer  # noqa: E402
from drifting.builtin_vae import BuiltinRecipe, builtin_key, builtin_vae  # noqa: E402
from drifting.bundle import validate_bundle  # noqa: E402
from drifting.core import lr_at  # noqa: E402
from drifting.provenance import load_checkpoint, start_run  # noqa: E402
from drifting.train import ResumeOptions  # noqa: E402

NBS = Path(__file__).resolve().parents[1] / "nbs"
QUICK_VAE = BuiltinRecipe(steps=3, batch_size=16, scale_items=256, eval_items=64)  # plumbing only


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # bit-equal comparisons below: one thread, the same shapes on both sides


# --- keep_every --------------------------------------------------------------------------------------------------------

def test_keep_every_keeps_every_nth_step_file(tmp_path):
    "keep_checkpoints=2, keep_every=3 over 7 steps: the newest two and every third stay; the bundle still validates."
    run = start_run("keep", dict(x=1), runs_dir=tmp_path, smoke=False)
    tiny_trainer().fit(7, run=run, ckpt_every=1, keep_checkpoints=2, keep_every=3, progress=False)
    run.finish()
    ck = run.dir / "artifacts" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["last.pt", "step_3.pt", "step_6.pt", "step_7.pt"]
    assert load_checkpoint(ck / "step_3.pt")["step"] == 3  # kept whole (verified against the recorded sha256)
    validate_bundle(run.dir)


# --- resume options, on the tiny trainer --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def at4():
    "The state of the tiny trainer after 4 steps (warm-up 2, so the peak rate is reached)."
    t = tiny_trainer()
    t.fit(4, progress=False)
    return t.state_dict()


def _resumed(sd, steps, **opts):
    t = tiny_trainer()
    t.load_state_dict(sd, options=ResumeOptions(**opts) if opts else None)
    return t, t.fit(steps, progress=False)


def test_plain_resume_is_still_exact(at4):
    "No option: the resumed losses and weights equal the uninterrupted run's, and the lr schedule is the config's."
    straight = tiny_trainer()
    h = straight.fit(7, progress=False)
    t, h2 = _resumed(at4, 7)
    assert h2["loss"] == h["loss"][4:] and h2["lr"] == h["lr"][4:]
    assert all(torch.equal(v, t.gen.state_dict()[k]) for k, v in straight.gen.state_dict().items())
    assert t.schedule == dict(warmup_from=0, lr=None)


def test_fresh_optimizer_empties_the_state_and_keeps_the_weights(at4):
    t = tiny_trainer()
    t.load_state_dict(at4, options=ResumeOptions(fresh_optimizer=True))
    assert len(t.opt.state) == 0 and len(at4["optimizer"]["state"]) > 0
    assert all(torch.equal(v, at4["model"][k]) for k, v in t.gen.state_dict().items())
    assert all(torch.equal(v, at4["ema"][k]) for k, v in t.ema.state_dict().items())
    m = t.step()
    assert {float(s["step"]) for s in t.opt.state.values()} == {1.0}  # Adam's counts restart (plain resume: 5)
    plain = tiny_trainer()
    plain.load_state_dict(at4)
    assert plain.step()["loss"] == m["loss"]  # the same draws and forward pass: only the update differs
    assert not torch.equal(plain.gen.final.linear.weight, t.gen.final.linear.weight)


def test_restart_warmup_restarts_the_schedule_at_the_resumed_step(at4):
    t, h = _resumed(at4, 8, restart_warmup=True)
    cfg = t.cfg
    assert h["lr"] == [lr_at(j, cfg) for j in range(4)]  # step 5 takes the rate of step 1: lr_init, then up again
    assert h["lr"][0] == cfg.lr_init and h["lr"][2] > h["lr"][1] > h["lr"][0] and t.schedule == dict(warmup_from=4, lr=None)


@pytest.mark.parametrize("opts, peak", [(dict(lr=2.5e-4), 2.5e-4), (dict(lr_scale=0.5), 0.5e-3)])
def test_new_peak_rate(at4, opts, peak):
    t, h = _resumed(at4, 6, **opts)
    want = [lr_at(s, dataclasses.replace(t.cfg, lr=peak)) for s in (4, 5)]  # past the warm-up: the new peak at once
    assert t.cfg.lr == 1e-3 and h["lr"] == want and abs(want[0] - peak) <= 1e-18  # the config is unchanged


def test_a_departed_run_resumes_exactly_with_its_schedule(at4):
    "Resume with options, checkpoint at step 6, plain resume of that: the same as going on to 9 in one piece."
    one, h = _resumed(at4, 9, fresh_optimizer=True, restart_warmup=True, lr_scale=0.5)
    a, ha = _resumed(at4, 6, fresh_optimizer=True, restart_warmup=True, lr_scale=0.5)
    sd = a.state_dict()
    assert sd["schedule"] == dict(warmup_from=4, lr=0.5e-3)
    b, hb = _resumed(sd, 9)
    assert ha["loss"] + hb["loss"] == h["loss"] and ha["lr"] + hb["lr"] == h["lr"]
    assert all(torch.equal(v, b.gen.state_dict()[k]) for k, v in one.gen.state_dict().items())


# --- through the run notebooks -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    "A quick built-in VAE, the tiny run_latent parameters, and one run that keeps step 2 by keep_every."
    root = tmp_path_factory.mktemp("trend")
    builtin_vae(root / "cache" / "vae", recipe=QUICK_VAE, progress=False)
    tiny = dict(preset="tiny", steps=4, ckpt_every=1, keep_checkpoints=1, keep_every=2, mae_preset="tiny", mae_steps=3,
                vae=str(root / "cache" / "vae" / builtin_key(recipe=QUICK_VAE)), alpha_eval="1", eval_per_class=2,
                fid_n=0, num_threads=1, progress=False, runs_dir=str(root / "runs"))
    e = dict(root=root, tiny=tiny, runs=root / "runs", environ=dict(os.environ, DRIFTING_CACHE=str(root / "cache")))
    r = _papermill(e, "run_latent", root / "first.ipynb", **tiny)
    assert r.returncode == 0, r.stderr[-4000:]
    (e["first"],) = sorted((root / "runs" / "latent").iterdir())
    return e


def _papermill(env, nb, out, **params):
    args = [a for k, v in params.items() for a in ("-p", k, str(v))]
    return subprocess.run([str(Path(sys.executable).parent / "papermill"), str(NBS / f"{nb}.ipynb"), str(out), *args,
                           "--no-progress-bar"], cwd=env["root"], env=env["environ"], capture_output=True, text=True,
                          timeout=900)


def test_run_latent_keep_every_and_resume_options_are_recorded(env):
    first = env["first"]
    ck = first / "artifacts" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["last.pt", "step_2.pt", "step_4.pt"]  # step 2 kept by keep_every
    assert json.loads((first / "provenance" / "repro.json").read_text())["config"]["keep_every"] == 2
    out = env["root"] / "resumed.ipynb"
    r = _papermill(env, "run_latent", out, **dict(env["tiny"], resume=str(ck / "step_2.pt"), resume_lr_scale=0.5,
                                                  resume_restart_warmup=True, resume_fresh_optimizer=True))
    assert r.returncode == 0, r.stderr[-4000:]
    (new,) = [b for b in sorted((env["runs"] / "latent").iterdir()) if b != first]
    ev = [json.loads(l) for l in (new / "provenance" / "events.jsonl").read_text().splitlines()]
    (loaded,) = [e for e in ev if e["event"] == "resume_loaded"]
    assert loaded["step"] == 2 and loaded["schedule"] == dict(warmup_from=2, lr=0.5e-3)
    assert loaded["options"] == dict(fresh_optimizer=True, restart_warmup=True, lr=None, lr_scale=0.5)
    lrs = [json.loads(l)["lr"] for l in (new / "logs" / "steps.jsonl").read_text().splitlines()]
    assert lrs == [1e-6, 1e-6 + (0.5e-3 - 1e-6) / 2]  # steps 3 and 4: the warm-up again, to half the peak
    assert load_checkpoint(new)["schedule"] == dict(warmup_from=2, lr=0.5e-3)
    cfg = json.loads((new / "provenance" / "repro.json").read_text())["config"]
    assert (cfg["resume_lr_scale"], cfg["resume_restart_warmup"], cfg["resume_fresh_optimizer"]) == (0.5, True, True)


def test_resume_option_without_resume_is_refused_before_work(env):
    runs = env["root"] / "refused"
    with pytest.raises(pm.PapermillExecutionError, match="resume is None"):
        pm.execute_notebook(str(NBS / "run_latent.ipynb"), str(env["root"] / "bad.ipynb"), cwd=str(env["root"]),
                            parameters=dict(env["tiny"], runs_dir=str(runs), resume_lr=1e-4), progress_bar=False)
    assert not runs.exists() or not any(runs.rglob("run_manifest.json"))


def test_run_eval_trend_over_the_kept_checkpoints(env):
    "checkpoints 'last:2' over steps 2 and 4: one table, a figure, the best checkpoint by accuracy in the metrics."
    first = env["first"]
    runs = env["root"] / "eval_runs"
    r = _papermill(env, "run_eval", env["root"] / "eval.ipynb", checkpoint=str(first), checkpoints="last:2",
                   best_by="accuracy", alphas="1,2", n_per_class=3, num_threads=1, progress=False, runs_dir=str(runs),
                   nn_audit=False)
    assert r.returncode == 0, r.stderr[-4000:]
    (b,) = sorted((runs / "eval").iterdir())
    validate_bundle(b)
    tr = json.loads((b / "artifacts" / "eval.json").read_text())["trend"]
    assert [(row["step"], row["alpha"]) for row in tr["rows"]] == [(2, 1.0), (2, 2.0), (4, 1.0), (4, 2.0)]
    best = max(tr["rows"], key=lambda row: (row["class_accuracy"], -row["step"]))  # the earlier on a tie
    assert (tr["best"]["step"], tr["best"]["alpha"]) == (best["step"], best["alpha"])
    assert tr["best_by"] == dict(metric="class_accuracy", direction="max")
    scal = json.loads((b / "metrics.json").read_text())["scalars"]
    assert scal["best_checkpoint_step"] == best["step"] and scal["best_checkpoint"].endswith(f"step_{best['step']}.pt")
    assert scal["best_checkpoint_class_accuracy"] == best["class_accuracy"] and scal["checkpoints_evaluated"] == "2,4"
    assert scal["best_checkpoint_sha256"] == tr["best"]["sha256"] and scal["best_by"] == "max:class_accuracy"
    csv = (b / "artifacts" / "trend.csv").read_text().splitlines()
    assert csv[0].startswith("step,alpha,") and len(csv) == 5
    assert "★" in (b / "artifacts" / "trend.md").read_text()
    assert (b / "artifacts" / "figures" / "checkpoint_trend.png").stat().st_size > 0
    meta = json.loads((b / "artifacts" / "predictions" / "metadata.json").read_text())
    assert sorted(s["id"] for s in meta["samples"]) == ["step_2_alpha_1_000", "step_2_alpha_2_000",
                                                          "step_4_alpha_1_000", "step_4_alpha_2_000"]
    # the same rows as the one-checkpoint evaluation of step 2 (same noise, reference and network)
    r = _papermill(env, "run_eval", env["root"] / "eval2.ipynb", checkpoint=str(first / "artifacts" / "checkpoints" /
                   "step_2.pt"), alphas="1,2", n_per_class=3, num_threads=1, progress=False,
                   runs_dir=str(env["root"] / "eval_one"), nn_audit=False)
    assert r.returncode == 0, r.stderr[-4000:]
    (b1,) = sorted((env["root"] / "eval_one" / "eval").iterdir())
    one = json.loads((b1 / "artifacts" / "eval.json").read_text())
    assert one["trend"] is None and one["protocol"]["train_step"] == 2
    for row in one["rows"]:
        (t,) = [x for x in tr["rows"] if x["step"] == 2 and x["alpha"] == row["alpha"]]
        assert all(t[k] == v for k, v in row.items()), row


@pytest.mark.parametrize("params, msg", [(dict(checkpoints="3,4"), "it holds steps \\[2, 4\\]"),
                                         (dict(checkpoints="last:0"), "must be an int ≥ 1"),
                                         (dict(best_by="fidd"), "not a known metric")])
def test_run_eval_trend_bad_parameters(env, params, msg):
    runs = env["root"] / "eval_bad"
    with pytest.raises(pm.PapermillExecutionError, match=msg):
        pm.execute_notebook(str(NBS / "run_eval.ipynb"), str(env["root"] / "bad_eval.ipynb"), cwd=str(env["root"]),
                            parameters=dict(checkpoint=str(env["first"]), progress=False, runs_dir=str(runs), **params),
                            progress_bar=False)
    assert not runs.exists() or not any(runs.rglob("run_manifest.json"))
