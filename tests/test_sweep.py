"""`drifting sweep` end to end: 2 variants × 2 seeds of run_latent with the tiny parameters of test_run_latent, each a
normal bundle; the gathered table and figure; a sweep whose one entry lost its completion (as a killed sweep leaves it)
re-runs that entry only; a bad spec is refused before any run."""
import csv, json, os
from pathlib import Path

import pytest
import yaml

from drifting.builtin_vae import BuiltinRecipe, builtin_key, builtin_vae
from drifting.bundle import validate_bundle
from drifting.cli import main

QUICK_VAE = BuiltinRecipe(steps=3, batch_size=16, scale_items=256, eval_items=64)  # plumbing only (test_run_latent)


def _bundles(d: Path) -> set:
    return {p.relative_to(d).as_posix() for p in (d / "runs").glob("*/*/*") if p.is_dir()}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    "A tiny 2 × 2 sweep, run once."
    root = tmp_path_factory.mktemp("sweep")
    cache = root / "cache"
    builtin_vae(cache / "vae", recipe=QUICK_VAE, progress=False)
    os.environ["DRIFTING_CACHE"] = str(cache)  # the runs' classifier and MAE caches (inherited by the subprocesses)
    base = dict(preset="tiny", steps=2, ckpt_every=2, vae=str(cache / "vae" / builtin_key(recipe=QUICK_VAE)),
                mae_preset="tiny", mae_steps=3, alpha_eval="1,2", eval_per_class=2, fid_n=0, num_threads=1,
                progress=False)  # fmt: skip
    spec = dict(name="tiny", description="two variants", base=base, seeds=[0, 1], paper=dict(default=8.46),
                variants={"default": {}, "attraction-only": dict(repulsion=0, taus=[0.05])})  # fmt: skip
    f = root / "tiny.yaml"
    f.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = root / "out"
    assert main(["sweep", str(f), "--out", str(out)]) == 0
    return dict(root=root, spec=f, out=out)


def test_every_entry_is_a_completed_bundle(sweep):
    out = sweep["out"]
    man = json.loads((out / "sweep.json").read_text())
    assert list(man["entries"]) == ["default/seed0", "default/seed1", "attraction-only/seed0", "attraction-only/seed1"]
    for e in man["entries"].values():
        b = out / e["bundle"]
        assert e["status"] == "completed" and e["rc"] == 0 and validate_bundle(b) == []
        train = json.loads((b / "provenance" / "repro.json").read_text())["config"]["train"]
        assert train["seed"] == e["seed"]  # each seed reaches its run
        assert (train["repulsion"], train["taus"]) == ((0, [0.05]) if e["variant"] == "attraction-only"
                                                       else (1.0, [0.02, 0.05, 0.2]))  # fmt: skip
    assert len(_bundles(out)) == 4


def test_table_and_figure(sweep):
    out = sweep["out"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["variant"], float(r["alpha"]), int(r["n"])) for r in rows] == [
        ("default", 1.0, 2), ("default", 2.0, 2), ("attraction-only", 1.0, 2), ("attraction-only", 2.0, 2)]  # fmt: skip
    raw = list(csv.DictReader((out / "entries.csv").open()))
    assert len(raw) == 8
    for r in rows:  # the summary is the mean of the entries' own numbers
        xs = [float(x["frechet"]) for x in raw if x["variant"] == r["variant"] and x["alpha"] == r["alpha"]]
        assert abs(float(r["frechet_mean"]) - sum(xs) / 2) <= 1e-9 * max(xs) and float(r["frechet_std"]) >= 0
        ev = [json.loads((out / x["bundle"] / "artifacts" / "eval_alpha.json").read_text()) for x in raw
              if x["variant"] == r["variant"] and x["alpha"] == r["alpha"]]  # fmt: skip
        assert sorted(xs) == sorted(next(q["frechet"] for q in e["rows"] if q["alpha"] == float(r["alpha"])) for e in ev)
    md = (out / "results.md").read_text()
    assert "| `default` | 8.46 | 1 | 2 |" in md and "| `attraction-only` |  | 2 | 2 |" in md
    assert (out / "results.png").stat().st_size > 1000


def test_resume_reruns_only_the_unfinished_entry(sweep):
    out = sweep["out"]
    f = out / "sweep.json"
    man = json.loads(f.read_text())
    before = {k: e["bundle"] for k, e in man["entries"].items()}
    man["entries"]["attraction-only/seed0"]["status"] = "running"  # what a sweep killed while it ran leaves
    f.write_text(json.dumps(man))
    assert main(["sweep", str(sweep["spec"]), "--out", str(out)]) == 0
    after = json.loads(f.read_text())["entries"]
    changed = [k for k in before if after[k]["bundle"] != before[k]]
    assert changed == ["attraction-only/seed0"]
    assert after["attraction-only/seed0"]["attempts"] == [before["attraction-only/seed0"]]
    assert len(_bundles(out)) == 5  # the earlier attempt's bundle is kept
    # a deleted bundle is not a completion either; --status says so and runs nothing
    assert main(["sweep", str(sweep["spec"]), "--out", str(out), "--status"]) == 0


def test_bad_spec_is_refused_before_any_run(sweep, capsys):
    bad = yaml.safe_load(sweep["spec"].read_text())
    bad["variants"]["broken"] = dict(kernel_norm="rows")
    f = sweep["root"] / "bad.yaml"
    f.write_text(yaml.safe_dump(bad))
    out = sweep["root"] / "bad_out"
    assert main(["sweep", str(f), "--out", str(out)]) == 2
    assert "sweep entry broken/seed0: kernel_norm must be one of" in capsys.readouterr().err
    assert not out.exists()


def test_a_sibling_sweep_reuses_the_shared_row(sweep, capsys):
    "A second table whose baseline row has the same parameters borrows the first sweep's bundles and runs nothing."
    spec = yaml.safe_load(sweep["spec"].read_text())
    other = dict(spec, name="other", variants={"method": {}}, paper={})
    f = sweep["root"] / "other.yaml"
    f.write_text(yaml.safe_dump(other, sort_keys=False))
    out = sweep["root"] / "other_out"
    assert main(["sweep", str(f), "--out", str(out)]) == 0
    ents = json.loads((out / "sweep.json").read_text())["entries"]
    assert {k: e["reused_from"] for k, e in ents.items()} == {"method/seed0": "out:default/seed0",
                                                             "method/seed1": "out:default/seed1"}  # fmt: skip
    assert not (out / "runs").exists()  # nothing ran here
    first = json.loads((sweep["out"] / "sweep.json").read_text())["entries"]
    assert (out / ents["method/seed0"]["bundle"]).resolve() == (sweep["out"] / first["default/seed0"]["bundle"]).resolve()
    assert "| `method` |  | 1 | 2 |" in (out / "results.md").read_text()  # gathered through the borrowed bundles
    capsys.readouterr()
    assert main(["sweep", str(f), "--out", str(out), "--status"]) == 0
    assert "(reused from out:default/seed1)" in capsys.readouterr().out
