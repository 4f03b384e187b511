"""Configs people already have (#25 item 5): the release's configs/gen/*.yaml read into a TrainConfig, and one name
and one type for the CFG scales of the run notebooks (`alphas`; `alpha_eval` a deprecated alias)."""

import json
import warnings
from pathlib import Path

import pytest
import yaml

from drifting.runs import check_train_run
from drifting.train import RELEASE_GEN_FIELDS, TrainConfig, read_release_yaml, train_config

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "release_gen_ablation.yaml"  # reconstructed from the spec, not the release's


def test_the_fixture_says_it_is_reconstructed():
    head = FIXTURE.read_text().splitlines()[0]
    assert "RECONSTRUCTED" in head and "NOT THE RELEASE FILE" in head


def test_the_ablation_fields_give_the_ablation_preset():
    # every value of the reconstructed file is the spec's ablation column, so a wrong mapping changes the config
    assert TrainConfig.from_release_yaml(FIXTURE, "ablation") == train_config("ablation")
    r = read_release_yaml(FIXTURE)
    assert r["alphas"] == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5] and r["unknown"] == []


def _write(tmp_path, d: dict) -> Path:
    p = tmp_path / "gen.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_each_mapped_key_reaches_its_field(tmp_path):
    d = yaml.safe_load(FIXTURE.read_text())
    d.update(train_batch_size=32, pos_per_sample=16, gen_per_label=8, neg_per_sample=4, push_per_step=48,
             neg_cfg_pw=5, no_cfg_frac=0.5, use_bf16=False, use_aug=True, use_remat=True, attn_fp32=False)
    c = TrainConfig.from_release_yaml(_write(tmp_path, d), "ablation")
    got = (c.n_c, c.n_pos, c.n_neg, c.n_unc, c.push_per_step, c.cfg_k, c.no_cfg_frac, c.bf16, c.aug, c.flip)
    assert got == (32, 16, 8, 4, 48, 5.0, 0.5, False, "rrc", True)
    assert isinstance(c.cfg_k, float)  # the field's type, so the config's JSON does not change with the file's spelling
    assert c.generator_overrides == dict(checkpointing=True, attn_fp32=False)
    assert c.lr == train_config("ablation").lr  # not in the file: the preset's
    assert len(RELEASE_GEN_FIELDS) == 11


def test_nested_sections_are_read_by_leaf_name(tmp_path):
    c = TrainConfig.from_release_yaml(_write(tmp_path, dict(train=dict(batch=dict(train_batch_size=16)))), "B/2")
    assert c == train_config("B/2", n_c=16)
    with pytest.raises(ValueError, match="appears twice"):
        read_release_yaml(_write(tmp_path, dict(a=dict(train_batch_size=16), b=dict(train_batch_size=32))))


def test_unknown_keys_are_refused_by_name_or_ignored_with_a_warning(tmp_path):
    p = _write(tmp_path, dict(train_batch_size=32, model=dict(lr=1e-3), total_steps=100))
    with pytest.raises(ValueError, match=r"\['model.lr', 'total_steps'\]"):
        TrainConfig.from_release_yaml(p)
    with pytest.warns(UserWarning, match="IGNORED"):
        c = TrainConfig.from_release_yaml(p, unknown="warn")
    assert c.n_c == 32 and c.lr == train_config("ablation").lr
    with pytest.raises(ValueError, match="unknown must be"):
        TrainConfig.from_release_yaml(p, unknown="skip")


@pytest.mark.parametrize("d, msg", [
    (dict(train_batch_size=32.5), "is not an int"),
    (dict(train_batch_size=True), "is not an int"),
    (dict(use_aug="yes please"), "is not a bool"),
    (dict(neg_per_sample=-1), "n_unc"),  # the config's own check names the field
])
def test_bad_values_name_the_key(tmp_path, d, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig.from_release_yaml(_write(tmp_path, d))


def test_missing_or_not_a_mapping(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TrainConfig.from_release_yaml(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="not a YAML mapping"):
        TrainConfig.from_release_yaml(tmp_path / "list.yaml")


def _params(nb: str) -> str:
    cells = json.loads((ROOT / "nbs" / nb).read_text())["cells"]
    return "".join(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))["source"])


def test_run_notebooks_name_cfg_scales_alphas_as_a_list():
    ns = {}
    for nb in ("run_latent.ipynb", "run_eval.ipynb"):
        g = {}
        exec(_params(nb), g)
        assert isinstance(g["alphas"], list) and all(isinstance(a, float) for a in g["alphas"]), nb
        ns[nb] = g
    assert ns["run_latent.ipynb"]["alpha_eval"] is None  # the deprecated alias, off by default


def test_alpha_eval_is_a_deprecated_alias_of_alphas():
    kw = dict(preset="tiny", steps=3, num_threads=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns about nothing
        cfg, a = check_train_run(alphas="1,2.5", **kw)
    with pytest.warns(FutureWarning, match="alpha_eval is deprecated"):
        cfg2, a2 = check_train_run(alpha_eval=[1.0, 2.5], **kw)
    assert a == a2 == [1.0, 2.5] and cfg == cfg2
    with pytest.raises(ValueError, match="alphas values must be ≥ 1"):
        check_train_run(alphas=[0.5], **kw)
