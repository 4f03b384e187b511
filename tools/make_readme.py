"""Write README.md from nbs/index.ipynb without quarto (nbdev_readme needs quarto, which these machines lack).

Markdown cells are copied as they are, except that an image path relative to nbs/ (`![..](images/x.png)`) is made
relative to the repository root; code cells become fenced Python blocks (their text outputs follow as plain blocks);
cells marked `#| hide` are skipped. `--check` exits 1 when README.md is out of date instead of writing it.
"""
import argparse, re, sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
LOCAL_IMAGE = re.compile(r"(!\[[^\]]*\]\()(?![a-zA-Z][a-zA-Z0-9+.-]*:|/|#)")  # `![alt](` before a relative path
HEADER = "<!-- Generated from nbs/index.ipynb by tools/make_readme.py (make readme): edit the notebook, not this file. -->\n\n"


def _directives(src: str) -> set[str]:
    return {l[3:].strip().split()[0] for l in src.splitlines() if l.startswith("#| ") and l[3:].strip()}


def render(nb_path: Path) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    parts = []
    for cell in nb.cells:
        src = cell.source.strip("\n")
        if cell.cell_type == "markdown":
            parts.append(LOCAL_IMAGE.sub(r"\g<1>nbs/", src))  # README.md sits one folder above the notebooks
        elif cell.cell_type == "code":
            if "hide" in _directives(src) or not src.strip(): continue
            code = "\n".join(l for l in src.splitlines() if not l.startswith("#| "))
            parts.append(f"```python\n{code}\n```")
            texts = [o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"]
            if any(texts): parts.append("```\n" + "".join(texts).rstrip("\n") + "\n```")
    return HEADER + "\n\n".join(parts) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md differs from what index.ipynb gives")
    args = ap.parse_args(argv)
    text, readme = render(ROOT / "nbs" / "index.ipynb"), ROOT / "README.md"
    if args.check:
        if not readme.exists() or readme.read_text(encoding="utf-8") != text:
            print("README.md is out of date with nbs/index.ipynb: run `make readme`.", file=sys.stderr)
            return 1
        return 0
    readme.write_text(text, encoding="utf-8")
    print(f"wrote {readme.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
