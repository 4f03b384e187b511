"""The main job end to end: `run_latent` through papermill with tiny parameters, resume from its bundle, refusals
that leave earlier bundles untouched, and a training process killed with SIGKILL that resumes to the same weights
as an uninterrupted run."""
import hashlib, json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import nbformat
import numpy as np
import papermill as pm
import pytest
import torch

from drifting.builtin_vae import BuiltinRecipe, builtin_key, builtin_vae
from drifting.bundle import validate_bundle

NB = Path(__file__).resolve().parents[1] / "nbs" / "run_latent.ipynb"
QUICK_VAE = BuiltinRecipe(steps=3, batch_size=16, scale_items=256, eval_items=64)  # plumbing only


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    "A cache folder with a quick built-in VAE, the tiny parameters, and one completed tiny run."
    root = tmp_path_factory.mktemp("latent")
    cache = root / "cache"
    builtin_vae(cache / "vae", recipe=QUICK_VAE, progress=False)
    vae_dir = cache / "vae" / builtin_key(recipe=QUICK_VAE)
    tiny = dict(preset="tiny", steps=4, ckpt_every=2, vae=str(vae_dir), mae_preset="tiny", mae_steps=3,
                alpha_eval="1,2", eval_per_class=3, fid_n=0, num_threads=1, progress=False, runs_dir=str(root / "runs"))
    os.environ["DRIFTING_CACHE"] = str(cache)  # classifier and MAE caches of the kernels go here
    return dict(root=root, tiny=tiny, runs=root / "runs")


def _papermill(env, out, **params):
    p = dict(env["tiny"], **params)
    args = [a for k, v in p.items() for a in ("-p", k, str(v))]
    e = dict(os.environ)
    return subprocess.run([str(Path(sys.executable).parent / "papermill"), str(NB), str(out), *args, "--no-progress-bar"],
                          cwd=env["root"], env=e, capture_output=True, text=True, timeout=900)


def _bundles(runs):
    return sorted((runs / "latent").iterdir()) if (runs / "latent").exists() else []


def _tree_hash(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def first(env):
    r = _papermill(env, env["root"] / "first.ipynb")
    assert r.returncode == 0, r.stderr[-4000:]
    (bundle,) = _bundles(env["runs"])
    return bundle


def test_parameters_cell_is_tagged():
    nb = nbformat.read(NB, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "steps = None" in code[0].source and 'dataset = "mnist5k"' in code[0].source  # None: the preset's (cpu: 600)


def test_run_latent_tiny_bundle(first):
    validate_bundle(first)
    man = json.loads((first / "run_manifest.json").read_text())
    assert man["status"] == "completed"
    ck = sorted(p.name for p in (first / "artifacts" / "checkpoints").iterdir())
    assert ck == ["last.pt", "step_2.pt", "step_4.pt"]
    state = torch.load(first / "artifacts" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4 and state["config"]["n_c"] == 2 and set(state["rng"]) >= {"run", "torch", "numpy", "python"}
    assert int(state["queues"]["unc.count"][0]) == 16  # four pushes of 8 into a global queue of 16
    steps = [json.loads(l) for l in (first / "logs" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert {"global", "norm_x", "layer1", "conv1_mean"} <= set(steps[0]["v2"]) and all(len(v) == 3 for v in steps[0]["v2"].values())
    meta = json.loads((first / "artifacts" / "predictions" / "metadata.json").read_text())
    assert [s["id"] for s in meta["samples"]] == ["alpha_1", "alpha_2"] and all(s["n"] == 30 for s in meta["samples"])
    ev = json.loads((first / "artifacts" / "eval_alpha.json").read_text())
    assert [r["alpha"] for r in ev["rows"]] == [1.0, 2.0]
    assert all(0 <= r["class_accuracy"] <= 1 and r["frechet"] > 0 and 0 <= r["recall"] <= 1 for r in ev["rows"])
    fl = ev["autoencoder_floor"]  # the built-in VAE's reconstructions of the held-out digits, in the same metrics
    assert fl["n"] == 500 and 0 <= fl["class_accuracy"] <= 1 and fl["frechet"] > 0 and 0 <= fl["recall"] <= 1
    scal = json.loads((first / "metrics.json").read_text())["scalars"]
    assert scal["steps"] == 4 and "best_class_accuracy" in scal and "best_recall" in scal
    assert scal["floor_frechet"] == fl["frechet"] and scal["floor_class_accuracy"] == fl["class_accuracy"]
    assert sorted(p.name for p in (first / "artifacts" / "figures").iterdir()) == ["samples_by_alpha.png", "training_curves.png"]
    cfg = json.loads((first / "provenance" / "repro.json").read_text())["config"]
    assert cfg["steps"] == 4 and cfg["train"]["generator"] == "tiny"


def test_resume_continues_and_mismatch_is_refused(env, first):
    before = _tree_hash(first)
    # a different learning rate: refused before any bundle exists, the first bundle untouched
    r = _papermill(env, env["root"] / "bad.ipynb", resume=str(first), steps=6, lr=0.5)
    assert r.returncode != 0 and "lr: 0.001 (checkpoint) -> 0.5 (now)" in r.stderr + r.stdout
    assert _bundles(env["runs"]) == [first] and _tree_hash(first) == before
    # the same setup continues from step 4 to 6 in a new bundle
    r = _papermill(env, env["root"] / "resumed.ipynb", resume=str(first), steps=6)
    assert r.returncode == 0, r.stderr[-4000:]
    new = [b for b in _bundles(env["runs"]) if b != first]
    assert len(new) == 1 and _tree_hash(first) == before
    steps = [json.loads(l)["step"] for l in (new[0] / "logs" / "steps.jsonl").read_text().splitlines()]
    assert steps == [5, 6]
    events = [json.loads(l) for l in (new[0] / "provenance" / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "resume" and e["step"] == 4 for e in events)
    manifest = json.loads((new[0] / "run_manifest.json").read_text())
    assert manifest["resume_from"]["step"] == 4


@pytest.mark.parametrize("params, msg", [
    (dict(steps=-5), "steps must be an int ≥ 1"),
    (dict(preset="XXL"), "unknown training preset 'XXL'"),
    (dict(dataset="/no/such/folder"), "neither a built-in"),
    (dict(alpha_eval="0.5,2"), "must be ≥ 1"),
    (dict(n_pos=20, strict_queues=True), "n_pos=20 > queue_per_class=8"),
    # issue 12, item 9: refused in the first check cell, before a bundle or any VAE/MAE work
    (dict(vae="/no/such/vae"), "not 'builtin', not an existing directory"),
    (dict(feature_encoder="builtin", mae_preset="huge"), "unknown mae_preset 'huge'"),
    (dict(keep_checkpoints=-1), "keep_checkpoints must be None"),
    (dict(allow_config_change="False"), "allow_config_change must be True or False"),
])
def test_bad_parameters_fail_before_work(env, first, params, msg):
    before = {b.name: _tree_hash(b) for b in _bundles(env["runs"])}
    with pytest.raises(pm.PapermillExecutionError, match=msg):
        pm.execute_notebook(str(NB), str(env["root"] / "bad.ipynb"), parameters=dict(env["tiny"], **params),
                            cwd=str(env["root"]), progress_bar=False)
    assert {b.name: _tree_hash(b) for b in _bundles(env["runs"])} == before  # nothing new, nothing changed


KILLED = textwrap.dedent('''
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    from _tiny_trainer import tiny_trainer
    from drifting.provenance import start_run
    torch.set_num_threads(1)
    tr = tiny_trainer()
    run = start_run("killed", dict(x=1), runs_dir={runs!r}, smoke=False)
    print(run.dir, flush=True)
    tr.fit(1000, run=run, ckpt_every=1, progress=False, callback=lambda t, m: time.sleep(0.05))
''')


def test_killed_training_resumes_to_the_same_weights(tmp_path):
    "SIGKILL at an arbitrary moment: the latest checkpoint loads, and resuming gives the uninterrupted run's weights."
    sys.path.insert(0, str(Path(__file__).parent))
    from _tiny_trainer import tiny_trainer
    from drifting.provenance import load_checkpoint
    p = subprocess.Popen([sys.executable, "-c", KILLED.format(tests=str(Path(__file__).parent), runs=str(tmp_path))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    bundle = Path(p.stdout.readline().strip())
    ck = bundle / "artifacts" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ck / "step_5.pt").exists(): time.sleep(0.05)
    time.sleep(0.13)  # somewhere inside a later step or checkpoint write
    p.send_signal(signal.SIGKILL); p.wait()
    state = load_checkpoint(ck / "last.pt")  # never a torn file
    k = state["step"]
    assert k >= 5
    torch.set_num_threads(1)
    resumed = tiny_trainer(); resumed.load_state_dict(state); h2 = resumed.fit(k + 4, progress=False)
    straight = tiny_trainer(); h = straight.fit(k + 4, progress=False)
    logged = [json.loads(l) for l in (bundle / "logs" / "steps.jsonl").read_text().splitlines()][:k]
    assert [r["loss"] for r in logged] == h["loss"][:k]  # the killed process took the same steps
    assert h2["loss"] == h["loss"][k:]
    for name in ("gen", "ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[key], b[key]) for key in a), name


EVAL_NB = NB.parent / "run_eval.ipynb"


def test_run_eval_on_the_tiny_run(env, first):
    "run_eval reads the training bundle, sweeps α, and leaves a bundle with the table, plots, samples and protocol."
    out = env["root"] / "eval.ipynb"
    params = dict(checkpoint=str(first), alphas="1,2", n_per_class=3, metric_net="auto", num_threads=1, progress=False,
                  runs_dir=str(env["runs"]), arr0=True)
    args = [a for k, v in params.items() for a in ("-p", k, str(v))]
    r = subprocess.run([str(Path(sys.executable).parent / "papermill"), str(EVAL_NB), str(out), *args, "--no-progress-bar"],
                       cwd=env["root"], env=dict(os.environ), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    (bundle,) = sorted((env["runs"] / "eval").iterdir())
    validate_bundle(bundle)
    ev = json.loads((bundle / "artifacts" / "eval.json").read_text())
    assert [row["alpha"] for row in ev["rows"]] == [1.0, 2.0]
    for row in ev["rows"]:
        assert {"fid", "kid_mean", "is_mean", "precision", "recall", "class_accuracy"} <= set(row) and row["n"] == 30
    pr = ev["protocol"]
    assert pr["fid_real_vs_real"]["n"] == 30 and pr["fid_real_vs_real"]["fid"] > 0
    assert pr["n_per_alpha"] == 30 and pr["ema"] is True and pr["seed"] == 0 and pr["nfe"] == 1 and pr["train_step"] == 4
    assert pr["checkpoint_sha256"] == hashlib.sha256((first / "artifacts" / "checkpoints" / "last.pt").read_bytes()).hexdigest()
    assert pr["metric_net"]["name"].startswith("mnist5k-classifier") and len(pr["metric_net"]["protocol_hash"]) == 64
    assert pr["reference"]["split"]["split"] == "heldout" and pr["reference"]["n"] == 500 and pr["reference"]["stats_key"]
    figs = sorted(p.name for p in (bundle / "artifacts" / "figures").iterdir())
    assert figs == ["metrics_vs_alpha.png", "nearest_neighbours.png", "samples_by_alpha.png"]
    meta = json.loads((bundle / "artifacts" / "predictions" / "metadata.json").read_text())
    assert len(meta["samples"]) == 2 and meta["samples"][0]["model"]["checkpoint_sha256"] == pr["checkpoint_sha256"]
    shard = np.load(bundle / "artifacts" / "predictions" / meta["samples"][0]["file"])  # α = 1: one shard of 30
    a0 = np.load(bundle / "artifacts" / "arr0" / "alpha_1.npz")  # the export other evaluators read
    assert a0["arr_0"].dtype == np.uint8 and a0["arr_0"].shape == (30, 32, 32, 1) and (a0["arr_0"] == shard["images"]).all()
    assert (a0["arr_1"] == shard["labels"]).all() and pr["samples"]["chunk"] == 1024
    # FID against the statistics it wrote (ADM's layout), imported as another tool's file: the same FID (issue 24, item 2)
    ref = bundle / "artifacts" / "ref_stats.npz"
    assert sorted(np.load(ref).files) == ["mu", "sigma"] and pr["reference"]["exported"] == "artifacts/ref_stats.npz"
    runs2 = env["root"] / "eval_imported_runs"
    imp = dict(params, runs_dir=str(runs2), nn_audit=False, arr0=False, ref_stats=str(ref),
               ref_stats_protocol="held-out MNIST-5k digits in the classifier's features")
    args2 = [a for k, v in imp.items() for a in ("-p", k, str(v))]
    r = subprocess.run([str(Path(sys.executable).parent / "papermill"), str(EVAL_NB), str(env["root"] / "eval_imp.ipynb"),
                        *args2, "--no-progress-bar"],
                       cwd=env["root"], env=dict(os.environ), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    (b2,) = sorted((runs2 / "eval").iterdir())
    ev2 = json.loads((b2 / "artifacts" / "eval.json").read_text())
    assert ev2["protocol"]["reference"]["sha256"] == hashlib.sha256(ref.read_bytes()).hexdigest()
    assert ev2["protocol"]["reference"]["asserted_protocol"].startswith("held-out MNIST-5k")
    for a, b in zip(ev["rows"], ev2["rows"]):
        assert abs(a["fid"] - b["fid"]) <= 1e-6 * abs(a["fid"]), (a["fid"], b["fid"])


@pytest.mark.parametrize("params, msg", [(dict(checkpoint="/no/such/run"), "no checkpoint at"),
                                         (dict(alphas="0.9"), "must be ≥ 1"),
                                         (dict(metric_net="clip"), "metric_net must be"),
                                         (dict(dataset="/no/such/images"), "neither a built-in"),  # issue 12, item 9
                                         (dict(ref_stats="/no/such.npz"), "say which protocol"),
                                         (dict(ref_stats="/no/such.npz", ref_stats_protocol="ADM"), "no reference statistics"),
                                         (dict(chunk=0), "chunk must be")])
def test_run_eval_bad_parameters(env, first, params, msg):
    runs = env["root"] / "eval_bad_runs"
    with pytest.raises(pm.PapermillExecutionError, match=msg):
        pm.execute_notebook(str(EVAL_NB), str(env["root"] / "bad_eval.ipynb"),
                            parameters=dict(dict(checkpoint=str(first), progress=False, runs_dir=str(runs)), **params),
                            cwd=str(env["root"]), progress_bar=False)
    assert not runs.exists() or not any(runs.rglob("run_manifest.json"))


def test_run_eval_refuses_another_decoder(env, first):
    "A decoder whose weights differ from the training run's is refused before an evaluation bundle exists."
    other = BuiltinRecipe(steps=2, batch_size=16, scale_items=256, eval_items=64)
    builtin_vae(env["root"] / "vae2", recipe=other, progress=False)
    runs = env["root"] / "eval_vae_runs"
    with pytest.raises(pm.PapermillExecutionError, match="the training run used"):
        pm.execute_notebook(str(EVAL_NB), str(env["root"] / "bad_vae.ipynb"), cwd=str(env["root"]), progress_bar=False,
                            parameters=dict(checkpoint=str(first), vae=str(env["root"] / "vae2" / builtin_key(recipe=other)),
                                            progress=False, runs_dir=str(runs)))
    assert not runs.exists() or not any(runs.rglob("run_manifest.json"))


def test_run_latent_on_a_latent_cache(env, first):
    "The ImageNet path in miniature: train from an exported latent cache (stored flips); a wrong decoder is refused."
    from drifting.tokenizer import export_latent_cache, load_vae
    cache = export_latent_cache("mnist5k", load_vae(env["tiny"]["vae"]), env["root"] / "lat_cache", resolution=32,
                                progress=False)
    r = _papermill(env, env["root"] / "cache_run.ipynb", dataset=str(cache), steps=2, ckpt_every=2, project="latcache")
    assert r.returncode == 0, r.stderr[-4000:]
    (bundle,) = sorted((env["runs"] / "latcache").iterdir())
    validate_bundle(bundle)
    ev = json.loads((bundle / "artifacts" / "eval_alpha.json").read_text())
    assert ev["classifier"] is None and all("class_accuracy" not in row for row in ev["rows"])  # not the built-in digits
    other = BuiltinRecipe(steps=1, batch_size=16, scale_items=256, eval_items=64)
    builtin_vae(env["root"] / "vae3", recipe=other, progress=False)
    r = _papermill(env, env["root"] / "cache_bad.ipynb", dataset=str(cache), steps=2, project="latcache",
                   vae=str(env["root"] / "vae3" / builtin_key(recipe=other)))
    assert r.returncode != 0 and "was encoded by" in r.stderr + r.stdout


def test_no_feature_encoder(env, first):
    "`-p feature_encoder None` trains on the raw drift loss alone (None is not 'the preset's' for this parameter)."
    r = _papermill(env, env["root"] / "raw.ipynb", feature_encoder=None, steps=2, ckpt_every=2, project="raw")
    assert r.returncode == 0, r.stderr[-4000:]
    (bundle,) = sorted((env["runs"] / "raw").iterdir())
    validate_bundle(bundle)
    steps = [json.loads(l) for l in (bundle / "logs" / "steps.jsonl").read_text().splitlines()]
    assert set(steps[0]["v2"]) == {"norm_x", "global"}  # no MAE keys
    cfg = json.loads((bundle / "provenance" / "repro.json").read_text())["config"]
    assert cfg["feature_encoder"] is None and cfg["train"]["feature_encoder"] is None


def test_keep_checkpoints_prunes_old_step_files(tmp_path):
    "keep_checkpoints=2 leaves the two newest step files; last.pt is the newest, byte for byte."
    sys.path.insert(0, str(Path(__file__).parent))
    from _tiny_trainer import tiny_trainer
    from drifting.provenance import start_run
    run = start_run("keep", dict(x=1), runs_dir=tmp_path, smoke=False)
    tiny_trainer().fit(5, run=run, ckpt_every=1, keep_checkpoints=2, progress=False)
    run.finish()
    ck = run.dir / "artifacts" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["last.pt", "step_4.pt", "step_5.pt"]
    assert (ck / "last.pt").read_bytes() == (ck / "step_5.pt").read_bytes()


def test_run_latent_two_processes(env, first):
    "-p nproc 2: two workers through torch's elastic launcher, rank 0 writes the bundle, all ranks' logs kept."
    runs = env["root"] / "runs_dist"
    r = _papermill(env, env["root"] / "dist.ipynb", nproc=2, runs_dir=str(runs))
    assert r.returncode == 0, r.stderr[-4000:]
    (bundle,) = sorted((runs / "latent").iterdir())
    validate_bundle(bundle)
    man = json.loads((bundle / "run_manifest.json").read_text())
    assert man["status"] == "completed" and man["world_size"] == 2
    assert man["distributed"]["mode"] == "exact" and man["distributed"]["backend"] == "gloo"
    assert sorted(p.name for p in (bundle / "artifacts" / "checkpoints").iterdir()) == ["last.pt", "step_2.pt", "step_4.pt"]
    logs = sorted(p.parent.name for p in (bundle / "logs" / "ranks").rglob("stderr.log"))
    assert logs == ["0", "1"]
    steps = [json.loads(l) for l in (bundle / "logs" / "steps.jsonl").read_text().splitlines()]
    one = [json.loads(l) for l in (first / "logs" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert abs(steps[0]["loss"] - one[0]["loss"]) <= 1e-6 * abs(one[0]["loss"])  # the same first step as one process


def _run_eval(env, out, **params):
    args = [a for k, v in params.items() for a in ("-p", k, str(v))]
    return subprocess.run([str(Path(sys.executable).parent / "papermill"), str(EVAL_NB), str(out), *args, "--no-progress-bar"],
                          cwd=env["root"], env=dict(os.environ), capture_output=True, text=True, timeout=900)


def test_run_eval_two_processes(env, first):
    "-p nproc 2: two workers make disjoint shares of the samples and their features; the metrics are one process's."
    rows = {}
    for n in (1, 2):
        runs = env["root"] / f"runs_eval{n}"
        r = _run_eval(env, env["root"] / f"eval{n}.ipynb", checkpoint=str(first), alphas="1,2", n_per_class=16,
                      num_threads=1, progress=False, nn_audit=False, nproc=n, runs_dir=str(runs))
        assert r.returncode == 0, r.stderr[-4000:]
        (bundle,) = sorted((runs / "eval").iterdir())
        validate_bundle(bundle)
        rows[n] = json.loads((bundle / "artifacts" / "eval.json").read_text())["rows"]
        man = json.loads((bundle / "run_manifest.json").read_text())
        assert man["status"] == "completed" and man.get("world_size", 1) == n
    assert sorted(p.parent.name for p in (bundle / "logs" / "ranks").rglob("stderr.log")) == ["0", "1"]
    for a, b in zip(rows[1], rows[2]):
        assert a["alpha"] == b["alpha"] and a["n"] == b["n"] == 160  # more samples than the 128 features: FID well posed
        for k in ("fid", "kid_mean", "is_mean", "precision", "recall", "class_accuracy"):
            assert abs(a[k] - b[k]) <= 1e-6 * max(abs(a[k]), 1e-12), (k, a[k], b[k])
