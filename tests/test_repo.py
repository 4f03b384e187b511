"""Repository invariants: the lock, the nbdev settings that papermill relies on, notebooks, README."""
import configparser, json, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_lock_pins_every_package_exactly():
    lines = [l.strip() for l in (ROOT / "requirements.lock.txt").read_text().splitlines()]
    reqs = [l for l in lines if l and not l.startswith("#")]
    assert len(reqs) > 50
    bad = [l for l in reqs if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.!+\-]+", l)]
    assert bad == [], f"unpinned or unusual lines in the lock: {bad}"
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # PEP 503: huggingface_hub == huggingface-hub
    names = {norm(l.split("==")[0]) for l in reqs}
    assert "torch==2.13.0" in reqs, "torch must be pinned as torch==2.13.0 (no local label)"
    # every direct requirement is in the lock
    direct = [norm(re.split(r"[=<>!~ ]", l.strip())[0]) for l in (ROOT / "requirements.in").read_text().splitlines()
              if l.strip() and not l.startswith("#")]
    assert set(direct) <= names, set(direct) - names
    # no CUDA runtime wheels: the lock is resolved against the CPU build (decision D-002)
    assert not any(n.startswith("nvidia-") or n == "triton" for n in names)


def test_settings_keep_papermill_tags_and_flags():
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    d = cfg["DEFAULT"]
    assert d["allowed_cell_metadata_keys"].split() == ["tags"], "nbdev_clean would strip papermill's parameters tag"
    assert set(d["tst_flags"].split()) >= {"notest", "slow", "gpu", "net"}
    assert d["lib_name"] == "drifting" and d["nbs_path"] == "nbs" and d["doc_path"] == "docs"


def test_notebooks_kernelspec_and_one_module_each():
    seen = {}
    for nb_path in sorted((ROOT / "nbs").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", nb_path.name
        for cell in nb["cells"]:
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            for m in re.finditer(r"^#\| default_exp (\S+)", src, re.M):
                assert m.group(1) not in seen, f"{m.group(1)} exported by {seen.get(m.group(1))} and {nb_path.name}"
                seen[m.group(1)] = nb_path.name
        if nb_path.name.startswith("run_"):
            assert not any("#| export" in "".join(c["source"]) for c in nb["cells"]), "run notebooks export nothing"
    assert "core" in seen


def test_readme_is_generated_from_index():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "make_readme.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_exported_code_is_readable():
    """The package passes ruff's line rules (E501 lines over 120, E702/E703 statements joined by `;`, pyproject's
    [tool.ruff]). nbdev writes each module's `__all__` itself, wrapped at 120 after its 10-character `__all__ = `: that
    one generated line is not ours to wrap."""
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "E501,E702,E703", "--output-format",
                        "concise", "--no-cache", str(ROOT / "drifting")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode in (0, 1), r.stderr  # 2: ruff itself failed
    found = [l for l in r.stdout.splitlines() if re.match(r".+\.py:\d+:\d+: E", l)]
    ours = []
    for l in found:
        path, line = l.split(":")[:2]
        text = Path(path if Path(path).is_absolute() else ROOT / path).read_text().splitlines()[int(line) - 1]
        if not text.startswith("__all__ = ["): ours.append(l)
    assert ours == [], "\n".join(ours[:40]) + f"\n({len(ours)} findings)"


def _settings():
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini")
    return cfg["DEFAULT"]


def test_library_requirements_leave_the_users_torch_alone():
    """The package asks for ranges (what the code needs); exact pins live only in the lock. pip keeps an installed
    distribution whose version satisfies the requirement, so another user's torch (an older release, a CUDA build
    with its local label) stays: checked against the specifiers, and by pip's own resolver on this environment."""
    from packaging.requirements import Requirement

    reqs = {Requirement(r).name: Requirement(r) for r in _settings()["requirements"].split()}
    assert not [r for r in reqs.values() if any(s.operator in ("==", "===") for s in r.specifier)], reqs
    for other in ("2.5.1", "2.12.0+cu124", "2.13.0+cpu", "2.14.0"):
        assert reqs["torch"].specifier.contains(other, prereleases=True), other
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
                        "--quiet", "--report", "-", "-e", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    names = [i["metadata"]["name"].lower() for i in json.loads(r.stdout)["install"]]
    assert names == ["drifting"], names  # nothing else, torch least of all, would be installed or replaced


def test_one_python_range_everywhere():
    "settings.ini (setup.py), pyproject, the smoke gate's manifest and the Makefile's interpreter choice agree."
    rng = _settings()["python_requires"]
    assert rng == ">=3.11,<3.13"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^requires-python = "' + re.escape(rng) + '"', pyproject, re.M), "pyproject's requires-python"
    assert json.loads((ROOT / "environment.manifest.json").read_text())["python"] == rng
    make = (ROOT / "Makefile").read_text()
    assert "(3, 11) <= sys.version_info[:2] < (3, 13)" in make and "python3.12 python3.11 python3" in make
    assert "--no-deps" not in (ROOT / "runs" / "README.md").read_text()
