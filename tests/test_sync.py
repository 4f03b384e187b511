"""CI check: the package is exactly what the notebooks export, and the notebooks are clean (nbdev_clean changes nothing).

Both are checked on a copy of the repository, so the working tree is never touched."""
import filecmp, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_package_in_sync_with_notebooks_and_notebooks_clean(tmp_path):
    for name in ("settings.ini", "setup.py", "pyproject.toml"): shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "nbs", tmp_path / "nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints", "_proc"))
    shutil.copytree(ROOT / "drifting", tmp_path / "drifting", ignore=shutil.ignore_patterns("__pycache__"))
    for cmd in ("nbdev_export", "nbdev_clean"):
        r = subprocess.run([str(BIN / cmd)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    stale = [f"drifting/{p.name}" for p in sorted((ROOT / "drifting").glob("*.py"))
             if not filecmp.cmp(p, tmp_path / "drifting" / p.name, shallow=False)]
    new = sorted(set(p.name for p in (tmp_path / "drifting").glob("*.py")) - set(p.name for p in (ROOT / "drifting").glob("*.py")))
    assert not stale and not new, (f"out of sync with the notebooks: {stale + new}; run nbdev_export and commit the "
                                   "notebooks and drifting/*.py together")
    dirty = [f"nbs/{p.name}" for p in sorted((ROOT / "nbs").glob("*.ipynb"))
             if not filecmp.cmp(p, tmp_path / "nbs" / p.name, shallow=False)]
    assert not dirty, f"not clean: {dirty}; run nbdev_clean before committing"
