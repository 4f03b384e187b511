"""Fault catalogue, secrets (issue 12, items 1-4 and 10's RUN.md fence): planted secrets in env, parameters, the command
line, untracked files, git remotes and the executed notebook never reach a bundle; config keys are data; every JSON
parses. Each case runs in well under a second or two on real files in temp dirs."""
import json, os, subprocess
from pathlib import Path

import pytest

from drifting.provenance import BundleError, attach_notebook, start_run
from drifting.bundle import validate_bundle
from _faults import audit, git, kw, manifest, events, quick_run, snapshot, tiny_repo

REPO = Path(__file__).resolve().parents[1]
HEX40 = "9f2c4e6a8b0d1f3e5a7c9b2d4f6e8a0c1b3d5f7e"
GLPAT = "glpat-" + "Xy7Qm2Lp9Rk4Tn6Wb1Vz"
STRIPE = "sk_live_" + "51HqLyjWDarjtT1zdp7dc"
URLTOK = "Tk9pQ2xLm7Zr"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tiny_repo(tmp_path_factory.mktemp("repo"))


def test_config_keys_are_data_not_secrets(repo, tmp_path):
    "item 1: `raw_key`, `monkey`, `keyboard` keep their values in config_resolved.yaml and repro.json."
    cfg = {"train": {"raw_key": True}, "monkey": "banana", "keyboard": "qwerty-layout", "seed": 3}
    run = quick_run(repo, tmp_path / "runs", cfg).finish()
    r = json.loads((run.dir / "provenance/repro.json").read_text())
    assert r["config"] == cfg, r["config"]
    y = (run.dir / "config_resolved.yaml").read_text()
    assert "raw_key: true" in y and "monkey: banana" in y and "<redacted>" not in y
    assert validate_bundle(run.dir) == [] and audit(run.dir) > 10


def test_short_secret_equal_to_a_number_keeps_json_valid(repo, tmp_path, monkeypatch):
    "item 2: API_KEY=123456 must not turn \"seed\": 123456 into `<redacted>` (invalid JSON)."
    monkeypatch.setenv("API_KEY", "123456")
    run = quick_run(repo, tmp_path / "runs", {"seed": 123456, "note": "123456"}, seed=123456)
    run.log_metrics(step=1, loss=123456.0); run.event("custom", value=123456); run.finish(score=123456)
    audit(run.dir)  # every JSON parses
    r = json.loads((run.dir / "provenance/repro.json").read_text())
    assert r["seed"] == 123456 and r["config"]["seed"] == 123456
    assert r["config"]["note"] == "<redacted>"  # a string equal to the secret is removed as a whole value
    assert "API_KEY=<redacted>" in (run.dir / "provenance/env.txt").read_text()
    assert validate_bundle(run.dir) == []


@pytest.mark.parametrize("name", [".env", ".netrc", "kaggle.json", "deploy.pem", "sub/credentials.json"])
def test_untracked_secret_files_recorded_by_name_only(tmp_path, name):
    "item 3: an untracked secret file is listed by name and hash; its text is in no file of the bundle."
    repo = tiny_repo(tmp_path / "repo")
    secret = "machine api login me password Zx81-not-a-pattern"
    (repo / name).parent.mkdir(parents=True, exist_ok=True); (repo / name).write_text(secret + "\n")
    (repo / "notes.py").write_text("y = 2\n")  # source-like: still diffed
    run = quick_run(repo, tmp_path / "runs").finish()
    un = {u["path"]: u for u in json.loads((run.dir / "provenance/repro.json").read_text())["code"]["untracked"]}
    assert un[name]["diffed"] is False and len(un[name]["sha256"]) == 64 and un["notes.py"]["diffed"] is True
    assert "+y = 2" in (run.dir / "provenance/git.diff").read_text()
    audit(run.dir, [secret, "Zx81-not-a-pattern"])


def test_gitignore_covers_secret_files():
    "item 3: the project's .gitignore keeps the usual secret files out of `git add -A`."
    for name in (".env", ".env.local", ".netrc", "kaggle.json", "server.pem", "id_rsa", "credentials.json"):
        r = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", name])
        assert r.returncode == 0, f"{name} is not ignored"


def test_token_shaped_parameters_never_reach_a_file(repo, tmp_path, monkeypatch):
    "item 4: a 40-hex key under a secret name, glpat-, sk_live_ and https://user:token@host given as parameters."
    url = f"https://user:{URLTOK}@data.example.org/x"
    cfg = {"wandb_api_key": HEX40, "gl": GLPAT, "stripe": STRIPE, "data_url": url, "lr": 0.1}
    with pytest.raises(RuntimeError):
        with quick_run(repo, tmp_path / "runs", cfg) as run:
            run.log(f"using {HEX40} and {STRIPE}")
            run.event("params", wandb_api_key=HEX40, text=f"token {GLPAT} here")
            raise RuntimeError(f"auth failed with {HEX40} at {url}")
    assert manifest(run.dir)["status"] == "failed"
    audit(run.dir, [HEX40, GLPAT, STRIPE, URLTOK])
    assert "data.example.org" in (run.dir / "config_resolved.yaml").read_text()  # the rest of the value stays


ENV_SECRETS = {"MYSQL_PWD": "swordfish-42", "SMTP_PASS": "letmein-77x", "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX",
               "DATABASE_URL": "postgres://app:pg-pass-9911@db:5432/x",
               "AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=QmFzZTY0S2V5U2VjcmV0PT0=;"}


def test_unusual_secret_env_names(repo, tmp_path, monkeypatch):
    "item 4: MYSQL_PWD, *_PASS, SLACK_WEBHOOK_URL, DATABASE_URL, AZURE_STORAGE_CONNECTION_STRING, also echoed in an error."
    for k, v in ENV_SECRETS.items(): monkeypatch.setenv(k, v)
    with pytest.raises(ValueError):
        with quick_run(repo, tmp_path / "runs", {"db": os.environ["DATABASE_URL"]}) as run:
            run.log("connecting to " + ENV_SECRETS["DATABASE_URL"])
            raise ValueError("cannot reach " + " ".join(ENV_SECRETS.values()))
    audit(run.dir, [*ENV_SECRETS.values(), "pg-pass-9911", "QmFzZTY0S2V5U2VjcmV0PT0"])
    env = (run.dir / "provenance/env.txt").read_text()
    for k in ENV_SECRETS: assert f"{k}=<redacted>" in env
    assert "PWD=" in env and "PWD=<redacted>" not in env.replace("MYSQL_PWD=<redacted>", "")  # the working folder stays


def test_secret_in_git_remote(tmp_path):
    "A token inside a git remote URL reaches no file (remotes are not recorded; the config file is not diffed)."
    repo = tiny_repo(tmp_path / "repo")
    git(repo, "remote", "add", "origin", f"https://oauth2:{GLPAT}@gitlab.example.org/me/x.git")
    run = quick_run(repo, tmp_path / "runs").finish()
    audit(run.dir, [GLPAT])


def _executed_nb(run_dir: Path | None, secret: str) -> dict:
    "An executed notebook as papermill writes it: injected parameters and an output that echoes them."
    out = [{"name": "stdout", "output_type": "stream", "text": [f"drifting: run bundle {run_dir}\n" if run_dir else "no bundle\n",
                                                                 f"token={secret}\n"]}]
    return {"cells": [{"cell_type": "code", "execution_count": 1, "id": "p1", "metadata": {"tags": ["injected-parameters"]},
                       "outputs": [], "source": [f'token = "{secret}"\n', "steps = 3\n"]},
                      {"cell_type": "code", "execution_count": 2, "id": "c2", "metadata": {}, "outputs": out, "source": ["print(token)"]}],
            "metadata": {"papermill": {"parameters": {"token": secret, "steps": 3}}}, "nbformat": 4, "nbformat_minor": 5}


def test_executed_notebook_redacted(repo, tmp_path):
    "item 4: a parameter that is a token (and its echo in an output) is redacted in the attached notebook, which parses."
    secret = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"  # a bare high-entropy key, matching no vendor pattern
    run = quick_run(repo, tmp_path / "runs").finish()
    src = tmp_path / "out.ipynb"; src.write_text(json.dumps(_executed_nb(run.dir, secret)))
    dst = attach_notebook(run.dir, src)
    nb = json.loads(dst.read_text())
    assert nb["cells"][0]["source"][0] == 'token = "<redacted>"\n' and nb["metadata"]["papermill"]["parameters"]["steps"] == 3
    audit(run.dir, [secret])
    assert validate_bundle(run.dir) == [] and manifest(run.dir)["notebook"]["kind"] == "copy"


def test_notebook_of_another_run_is_refused(repo, tmp_path):
    "item 6: a sweep sharing one output path: bundle k must not receive the notebook of run k+1."
    a = quick_run(repo, tmp_path / "runs").finish(); b = quick_run(repo, tmp_path / "runs").finish()
    shared = tmp_path / "shared_out.ipynb"; shared.write_text(json.dumps(_executed_nb(b.dir, "x")))
    before = snapshot(b.dir)
    with pytest.raises(BundleError, match="is not the notebook of run"):
        attach_notebook(a.dir, shared)
    assert not (a.dir / "notebook.ipynb").exists() and manifest(a.dir)["notebook"] is None
    assert events(a.dir)[-1]["event"] == "notebook_refused"
    assert snapshot(b.dir) == before and validate_bundle(a.dir) == []
    attach_notebook(b.dir, shared)  # its own notebook is accepted
    assert manifest(b.dir)["notebook"]["kind"] == "copy"


def test_code_fence_and_newline_in_a_parameter(repo, tmp_path):
    "item 10: a parameter holding a newline and ``` does not break out of RUN.md's code blocks."
    evil = "x\n```\n# Injected heading\n```"
    run = quick_run(repo, tmp_path / "runs", {"note": evil, "seed": 0}).finish()
    md = (run.dir / "RUN.md").read_text().splitlines()
    i = md.index("````yaml"); j = md.index("````", i + 1)  # a fence longer than the ``` inside the value
    hits = [k for k, l in enumerate(md) if "Injected heading" in l]
    assert hits and all(i < k < j for k in hits), (i, j, hits)  # the value stays inside the block
    assert md[j + 2] == "## Headline metrics"
    audit(run.dir)
