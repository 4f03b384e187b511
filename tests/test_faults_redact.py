"""Fault catalogue, redaction that cannot damage data (issue 23, item 1): the executed notebook's images are the
bytes papermill wrote; data paths and identifiers are recorded as given; the plain secrets of the issue (untracked
`notes.txt` with `export MYSQL_PWD=…` and a 40-hex key, `fetch.sh` with `?password=…`, a `db_password` parameter)
reach no file. Every case ends with `settled`: the earlier bundle byte-identical, every JSON parses, no planted
secret in any file."""
import base64, io, json, subprocess
from pathlib import Path

import nbformat
import pytest

from drifting.bundle import validate_bundle
from drifting.provenance import attach_notebook
from _faults import earlier, images, manifest, quick_run, settled, tiny_repo

PW, HEX = "Sw0rdf1sh-Pa55", "9f2c4e6a8b0d1f3e5a7c9b2d4f6e8a0c1b3d5f7e"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tiny_repo(tmp_path_factory.mktemp("repo"))


def _png(seed: int = 0) -> bytes:
    "A real PNG (matplotlib): random-looking base64, exactly what the entropy rule used to break."
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(2, 2)); ax.imshow(np.random.default_rng(seed).random((16, 16))); buf = io.BytesIO()
    fig.savefig(buf, format="png"); plt.close(fig)
    return buf.getvalue()


def _executed(run_dir: Path, outputs: list, params: dict | None = None) -> nbformat.NotebookNode:
    "An executed notebook as papermill leaves it: parameters recorded, start_run's line, then `outputs`."
    nb = nbformat.v4.new_notebook()
    start = nbformat.v4.new_output("stream", name="stderr", text=f"drifting: run bundle {run_dir}\n")
    nb.cells = [nbformat.v4.new_code_cell("run = start_run(...)", outputs=[start]),
                nbformat.v4.new_code_cell("plot()", outputs=outputs)]
    nb.metadata["papermill"] = {"parameters": params or {"steps": 3}}
    return nb


BLOBS = {
    "image/png": lambda: base64.b64encode(_png()).decode(),
    "image/jpeg": lambda: base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4).decode(),
    "image/gif": lambda: base64.b64encode(b"GIF89a" + bytes(range(255, -1, -1)) * 3).decode(),
    "application/pdf": lambda: base64.b64encode(b"%PDF-1.4 " + _png(1)).decode(),
    "application/vnd.custom+octet": lambda: base64.b64encode(_png(2)).decode(),
    "image/svg+xml": lambda: '<svg xmlns="http://www.w3.org/2000/svg"><path d="M0 0L9 9" id="a9Zq81LmW4vN7tR1yB5cD9fG3"/></svg>',
}


@pytest.mark.parametrize("mime", list(BLOBS))
def test_notebook_images_are_papermills_bytes(repo, tmp_path, mime):
    "Images and other non-text outputs of the attached notebook equal papermill's (and a PNG decodes)."
    runs = tmp_path / "runs"; before = earlier(repo, runs)
    run = quick_run(repo, runs).finish(); blob = BLOBS[mime]()
    out = nbformat.v4.new_output("display_data", data={mime: blob, "text/plain": f"<Figure> export MYSQL_PWD={PW}"})
    src = tmp_path / "out.ipynb"; nbformat.write(_executed(run.dir, [out]), src)
    dst = json.loads(attach_notebook(run.dir, src).read_text())
    assert images(dst) == images(json.loads(src.read_text())) and images(dst)[0] == (mime, blob)
    if mime == "image/png":
        from PIL import Image
        assert Image.open(io.BytesIO(base64.b64decode(images(dst)[0][1]))).size[0] > 0
    assert validate_bundle(run.dir) == [] and settled(runs, before, [PW]) > 20


def test_notebook_with_nothing_to_redact_is_papermills_file(repo, tmp_path):
    "A notebook with no secret is attached byte for byte as nbformat (papermill) wrote it."
    runs = tmp_path / "runs"; before = earlier(repo, runs); run = quick_run(repo, runs).finish()
    outs = [nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(_png()).decode(), "text/plain": "<Figure>"})]
    src = tmp_path / "out.ipynb"; nbformat.write(_executed(run.dir, outs), src)
    assert attach_notebook(run.dir, src).read_bytes() == src.read_bytes()
    assert manifest(run.dir)["notebook"]["kind"] == "copy" and settled(runs, before) > 20


TEXT_OUTPUTS = {
    "stdout": lambda s: nbformat.v4.new_output("stream", name="stdout", text=f"export MYSQL_PWD={s}\n"),
    "stderr": lambda s: nbformat.v4.new_output("stream", name="stderr", text=f"curl https://h/x?user=a&password={s}\n"),
    "error": lambda s: nbformat.v4.new_output("error", ename="AuthError", evalue=f"bad password={s}",
                                              traceback=[f"AuthError: db_password: {s}"]),
    "text/plain": lambda s: nbformat.v4.new_output("execute_result", data={"text/plain": f"{{'db_password': '{s}'}}"},
                                                   execution_count=1),
    "text/html": lambda s: nbformat.v4.new_output("display_data", data={"text/html": f"<pre>api_key={s}</pre>"}),
    "text/markdown": lambda s: nbformat.v4.new_output("display_data", data={"text/markdown": f"`--token {s}`"}),
    "application/json": lambda s: nbformat.v4.new_output("display_data", data={"application/json": {"client_secret": s}}),
}


@pytest.mark.parametrize("kind", list(TEXT_OUTPUTS))
def test_secret_echoed_in_notebook_text_is_redacted(repo, tmp_path, kind):
    "A secret printed in a stream, an error, a text/* or JSON output is redacted; the PNG beside it is untouched."
    runs = tmp_path / "runs"; before = earlier(repo, runs); run = quick_run(repo, runs).finish()
    png = base64.b64encode(_png()).decode()
    outs = [TEXT_OUTPUTS[kind](PW), nbformat.v4.new_output("display_data", data={"image/png": png})]
    src = tmp_path / "out.ipynb"; nbformat.write(_executed(run.dir, outs), src)
    dst = json.loads(attach_notebook(run.dir, src).read_text())
    assert images(dst) == [("image/png", png)] and "<redacted>" in json.dumps(dst["cells"][1]["outputs"][0])
    assert settled(runs, before, [PW]) > 20


GIVEN = {
    "dataset": "/data/ILSVRC2012_img_train_ADM256_latents",
    "vae": "stabilityai/sd-vae-ft-mse@31f26fdeee1355a5c34592e401dd41e45d25a493",
    "commit": "e83c5163316f89bfbde7d9ab23ca2e25604af290",  # not HEX: a value once given as a secret stays one
    "sha256": "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef",
    "run_uuid": "3f2b8c1e-9d4a-4b7e-8f1a-2c6d5e9b0a71",
    "checksum_b64": "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0MTIzNDU2Nzg5",
    "wandb_run": "dr1ft-Xq7Zp2Lm9Kw4",
    "shard": "s3://my-bucket/ImageNet/train-00001-of-01024.tar",
    "weights_url": "https://huggingface.co/facebook/convnextv2-base-22k-224/resolve/2a8f1e43/model.safetensors",
    "resume": "/runs/latent/2026-12-06_23-07-41_d6f776c-2",
    "raw_key": "k3Y-Zq8xKp2LmW4vN7tR1yB5cD9f",
    "tokenizer": "builtin-AbCdEf0123456789XyZ",
    "num_tokens": 256,
    "password_file": "/etc/drifting/db.pass",
}


@pytest.mark.parametrize("name", list(GIVEN))
def test_paths_and_identifiers_recorded_as_given(repo, tmp_path, name):
    "Data paths, revisions, digests, ids and names merely containing `key`/`token` are recorded exactly as given."
    runs = tmp_path / "runs"; before = earlier(repo, runs); value = GIVEN[name]
    run = quick_run(repo, runs, {"seed": 0, name: value}, dataset={"name": value}).finish()
    repro = json.loads((run.dir / "provenance/repro.json").read_text())
    assert repro["config"][name] == value and repro["dataset"]["name"] == value
    assert str(value) in (run.dir / "config_resolved.yaml").read_text() and str(value) in (run.dir / "RUN.md").read_text()
    assert "<redacted>" not in (run.dir / "config_resolved.yaml").read_text() + (run.dir / "RUN.md").read_text()
    assert validate_bundle(run.dir) == [] and settled(runs, before) > 20


SECRET_PARAMS = ["db_password", "MYSQL_PWD", "apiKey", "HF_TOKEN", "client_secret", "aws_secret_access_key",
                 "private_key", "credentials", "smtp_pass", "passwd", "github.token"]


@pytest.mark.parametrize("name", SECRET_PARAMS)
def test_secret_named_parameter_reaches_no_file(repo, tmp_path, name):
    "A parameter under a secret name: redacted in configs, repro, RUN.md, events, logs and error messages."
    runs = tmp_path / "runs"; before = earlier(repo, runs)
    with pytest.raises(RuntimeError):
        with quick_run(repo, runs, {"seed": 0, name: PW, "dataset": GIVEN["dataset"]}) as run:
            run.log(f"connecting with {PW}"); run.event("params", note=f"using {PW}")
            raise RuntimeError(f"login refused for {PW}")
    repro = json.loads((run.dir / "provenance/repro.json").read_text())
    assert repro["config"][name] == "<redacted>" and repro["config"]["dataset"] == GIVEN["dataset"]
    assert manifest(run.dir)["status"] == "failed" and settled(runs, before, [PW]) > 20


UNTRACKED = {
    "notes.txt": f"export MYSQL_PWD={PW}\nwandb_api_key = {HEX}\nplain notes stay\n",
    "fetch.sh": f'curl "https://data.example.org/get?user=me&password={PW}&split=train"\n# plain notes stay\n',
    "train.cfg": f"[db]\ndb_password: {PW}\nplain notes stay\n",
    "settings.json": json.dumps({"api_key": PW, "note": "plain notes stay"}) + "\n",
    "README.draft": f"clone https://oauth2:{PW}@gitlab.example.org/me/x.git  (plain notes stay)\n",
    "launch.slurm": f"srun python train.py --token {PW}  # plain notes stay\n",
    "deploy.yaml": f"env:\n  HF_TOKEN: '{PW}'\n  NOTE: plain notes stay\n",
    "server.txt": f"-----BEGIN RSA PRIVATE KEY-----\nMIIB{PW}\n-----END RSA PRIVATE KEY-----\nplain notes stay\n",
    "noext": f"SMTP_PASS={PW}\nplain notes stay\n",
}


@pytest.mark.parametrize("name", list(UNTRACKED))
def test_untracked_text_of_any_extension_is_scrubbed(tmp_path, name):
    "An untracked text file enters git.diff scrubbed by the same rules (its other lines kept), whatever its suffix."
    repo = tiny_repo(tmp_path / "repo"); runs = tmp_path / "runs"; before = earlier(repo, runs)
    (repo / name).write_text(UNTRACKED[name])
    run = quick_run(repo, runs).finish()
    diff = (run.dir / "provenance/git.diff").read_text()
    assert "plain notes stay" in diff and "<redacted>" in diff
    un = {u["path"]: u for u in json.loads((run.dir / "provenance/repro.json").read_text())["code"]["untracked"]}
    assert un[name]["diffed"] is True and len(un[name]["sha256"]) == 64
    assert settled(runs, before, [PW, HEX]) > 20


@pytest.mark.parametrize("name,data", [("weights.bin", b"\x00\x01" + PW.encode() + b"\x00"),
                                        ("latin1.txt", ("caf\xe9 password=" + PW).encode("latin-1")),
                                        (".env", f"TOKEN={PW}\n".encode())], ids=["binary", "latin1", "dotenv"])
def test_untracked_binary_or_secret_file_listed_by_name_and_hash(tmp_path, name, data):
    "Binary, non-UTF-8 and secret-named files are listed by name and sha256 only: none of their bytes enter the bundle."
    repo = tiny_repo(tmp_path / "repo"); runs = tmp_path / "runs"; before = earlier(repo, runs)
    (repo / name).write_bytes(data)
    run = quick_run(repo, runs).finish()
    un = {u["path"]: u for u in json.loads((run.dir / "provenance/repro.json").read_text())["code"]["untracked"]}
    assert un[name]["diffed"] is False and len(un[name]["sha256"]) == 64
    assert settled(runs, before, [PW]) > 20


def test_git_diff_of_a_dirty_tree_still_applies(tmp_path):
    "A scrubbed diff still applies with `git apply` (only the secret's characters change)."
    repo = tiny_repo(tmp_path / "repo"); runs = tmp_path / "runs"; before = earlier(repo, runs)
    (repo / "pkg" / "a.py").write_text(f"x = 2\ndb_password = '{PW}'\n"); (repo / "notes.txt").write_text("hello\n")
    run = quick_run(repo, runs).finish()
    fresh = tmp_path / "fresh"; subprocess.run(["git", "clone", "-q", str(repo), str(fresh)], check=True)
    subprocess.run(["git", "-C", str(fresh), "apply", str(run.dir / "provenance/git.diff")], check=True)
    assert (fresh / "pkg/a.py").read_text() == "x = 2\ndb_password = '<redacted>'\n" and (fresh / "notes.txt").exists()
    assert settled(runs, before, [PW]) > 20


@pytest.mark.parametrize("end", ["finish", "fail", "crash_closed"])
def test_rank_logs_are_scrubbed_when_the_run_closes(repo, tmp_path, end):
    "Per-rank logs that torch's launcher tees into logs/ranks/ are scrubbed when the run closes (or is closed)."
    runs = tmp_path / "runs"; before = earlier(repo, runs); run = quick_run(repo, runs)
    log = run.path("logs", "ranks", "0", "stderr.log"); log.write_text(f"rank 0 step 1\nexport HF_TOKEN={PW}\n")
    binary = run.path("logs", "ranks", "0", "trace.bin"); binary.write_bytes(b"\x00\xff\x00")
    if end == "finish":
        run.finish()
    elif end == "fail":
        run.fail(RuntimeError("worker died"))
    else:
        import drifting.lifecycle as life
        for undo in run._hooks: undo()
        m = manifest(run.dir); m["writer"]["start_ticks"] = (m["writer"]["start_ticks"] or 0) - 1
        (run.dir / "run_manifest.json").write_text(json.dumps(m))
        assert life.close_stale(run.dir)["status"] == "crashed"
    assert log.read_text() == "rank 0 step 1\nexport HF_TOKEN=<redacted>\n" and binary.read_bytes() == b"\x00\xff\x00"
    assert settled(runs, before, [PW]) > 20
