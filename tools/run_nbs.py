"""Execute the library notebooks in place so that their committed outputs (tables, small figures) are current.

Cells are skipped exactly as `nbdev_test` skips them: cells flagged with a test flag not asked for
(`slow gpu net notest` by default), `#| eval: false` cells and the final `nbdev_export()` cell. Run notebooks
(`run_*.ipynb`) are executed by papermill in runs, not here. Each notebook's outputs must stay small
(`--max-kb`, default 400 KB per notebook). Afterwards run `nbdev_clean` (the Makefile target `outputs` does).
"""
import argparse, os, sys, time
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

ROOT = Path(__file__).resolve().parents[1]
SKIP_FLAGS = {"slow", "gpu", "net", "notest"}


def directives(src: str) -> dict:
    "The `#| key value` lines at the top of a cell."
    out = {}
    for line in src.splitlines():
        if not line.startswith("#|"): break
        parts = line[2:].strip().split(maxsplit=1)
        if parts: out[parts[0]] = parts[1] if len(parts) > 1 else ""
    return out


def run_notebook(path: Path, flags: set) -> float:
    nb = read_nb(path)
    def skip(cell):
        if cell.cell_type != "code": return True
        if "nbdev_export(" in cell.source: return True
        d = directives(cell.source)
        if d.get("eval:", "").lower() == "false": return True
        return bool((SKIP_FLAGS - flags) & d.keys())
    for cell in nb.cells:  # flagged cells keep no stale outputs
        if cell.cell_type == "code" and skip(cell): cell.outputs, cell.execution_count = [], None
    t0 = time.time()
    shell = CaptureShell(path)
    cwd = os.getcwd(); os.chdir(path.parent)
    try: shell.run_all(nb, exc_stop=True, preproc=skip)
    except Exception:
        sys.stderr.write(shell.prettytb(fname=path) + "\n")
        raise SystemExit(f"{path.name}: a cell failed; the notebook was not rewritten")
    finally: os.chdir(cwd)
    write_nb(nb, path)
    return time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("notebooks", nargs="*", help="notebooks to run (default: every library notebook in nbs/)")
    ap.add_argument("--flags", default="", help="test flags to run as well, e.g. 'slow'")
    ap.add_argument("--max-kb", type=int, default=400, help="largest allowed notebook size after execution")
    args = ap.parse_args(argv)
    paths = [Path(p).resolve() for p in args.notebooks] or sorted(
        p for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith(("run_", "_")))
    too_big = []
    for p in paths:
        dt = run_notebook(p, set(args.flags.split()))
        kb = p.stat().st_size / 1024
        print(f"{p.name}: {dt:.1f} s, {kb:.0f} KB")
        if kb > args.max_kb: too_big.append(f"{p.name} ({kb:.0f} KB)")
    if too_big:
        print(f"notebooks over {args.max_kb} KB (shrink figures or outputs): {', '.join(too_big)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
