"""Shared pieces of the fault catalogue (tests/test_faults_*.py): a throw-away git tree holding a tiny package, a fast
bundle (no smoke gate), byte snapshots to prove nothing earlier changed, and the audit every case ends with: every
JSON in every bundle parses, and no planted secret appears in any file."""
import hashlib, json, subprocess
from pathlib import Path

from drifting.provenance import start_run


def git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


def tiny_repo(d: Path) -> Path:
    "A git tree with a one-file package `pkg` (start_run fingerprints it in milliseconds)."
    d = Path(d); (d / "pkg").mkdir(parents=True); (d / "pkg" / "a.py").write_text("x = 1\n")
    (d / ".gitignore").write_text("runs/\n")
    git(d, "init", "-q"); git(d, "add", ".")
    git(d, "-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-qm", "init")
    return d


def kw(repo: Path, runs: Path, **more) -> dict:
    return dict(code_root=repo, package="pkg", smoke=False, runs_dir=runs, **more)


def quick_run(repo, runs, config=None, **more):
    return start_run("toy", config if config is not None else {"seed": 0}, **kw(repo, runs, **more))


def snapshot(d: Path) -> dict:
    "Every file under `d` with the sha256 of its bytes (symlinks by target)."
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if not p.is_symlink() else f"-> {p.readlink()}"
            for p in sorted(Path(d).rglob("*")) if p.is_file() or p.is_symlink()}


def audit(root: Path, secrets=()) -> int:
    "Every .json/.ipynb under `root` parses, every .jsonl line parses, no secret's bytes appear in any file; returns files seen."
    n = 0
    for p in Path(root).rglob("*"):
        if not p.is_file() or p.is_symlink(): continue
        n += 1; data = p.read_bytes()
        for s in secrets: assert s.encode() not in data, f"secret {s[:6]}… found in {p}"
        if p.suffix in (".json", ".ipynb"): json.loads(data)
        if p.suffix == ".jsonl":
            for line in data.decode().splitlines(): json.loads(line)
    return n


def manifest(d: Path) -> dict:
    return json.loads((Path(d) / "run_manifest.json").read_text())


def events(d: Path) -> list[dict]:
    return [json.loads(l) for l in (Path(d) / "provenance" / "events.jsonl").read_text().splitlines()]


def earlier(repo, runs):
    "A finished bundle made before the fault, and the bytes of every file in it (to prove nothing earlier changed)."
    run = quick_run(repo, runs, {"seed": 0, "note": "earlier"}); run.save_checkpoint({"w": __import__("torch").ones(2)}, step=1)
    run.finish()
    return run.dir, snapshot(run.dir)


def settled(runs: Path, before: tuple, secrets=()) -> int:
    "The audit every case ends with: the earlier bundle byte-identical, every JSON parses, no planted secret anywhere."
    d, snap = before
    assert snapshot(d) == snap, "an earlier bundle changed"
    return audit(runs, secrets)


def images(nb: dict) -> list[tuple[str, str]]:
    "(mime, data) of every non-text output of a notebook, in order."
    return [(m, v if isinstance(v, str) else "".join(v)) for c in nb.get("cells", []) for o in c.get("outputs") or []
            for m, v in (o.get("data") or {}).items() if not m.startswith("text/") and m != "application/json"]
