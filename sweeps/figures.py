"""The figures of the ablations page (nbs/ablations.md) from finished sweep folders.

    python sweeps/figures.py SWEEPS_PARENT [--out nbs/images/ablations]

For every sweep folder under SWEEPS_PARENT (one per spec in sweeps/): its gathered tables (`drifting.sweep.gather_sweep`,
which also writes compare.md), its results figure, and a figure of the quick class accuracy against steps per variant
(mean over seeds, from each bundle's `eval_every` records). From tab1: the diagnostic records of the method's row and
the attraction-only row side by side (`drifting.sweep.diag_figure`). Images are saved with a small palette so they
stay small in git. With `--page FILE`, each sweep's compare.md replaces the text between `<!-- begin NAME -->` and
`<!-- end NAME -->` in FILE, so the page's tables are the sweeps' own numbers.
"""
import argparse, io, re, statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

from drifting.sweep import METRICS, SweepSpec, diag_figure, gather_sweep, read_steps, read_sweep


def save_small(fig, path: Path, colours: int = 64):
    "The figure as a PNG with an adaptive palette of `colours` (a few tens of KB)."
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(colours).save(path, optimize=True)
    print(f"{path} ({path.stat().st_size // 1024} KB)")


def curves_figure(d: Path):
    "Quick class accuracy (200 samples, α = 1) against steps, mean over seeds, one line per variant."
    man = read_sweep(d)
    curves = {}
    for e in man["entries"].values():
        if e.get("status") != "completed":
            continue
        for r in read_steps(d / e["bundle"]):
            if "eval" in r and "class_accuracy" in r["eval"]:
                curves.setdefault(e["variant"], {}).setdefault(r["step"], []).append(r["eval"]["class_accuracy"])
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    for i, (v, c) in enumerate(curves.items()):
        steps = sorted(c)
        ax.plot(steps, [statistics.fmean(c[s]) for s in steps], "o-", ms=3, color=f"C{i % 10}", label=v)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("quick class accuracy (α = 1)", fontsize=8)
    ax.set_title(f"{d.name}: accuracy during training, mean over seeds", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parent", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "nbs" / "images" / "ablations")
    ap.add_argument("--page", type=Path, default=None, help="a Markdown page whose table markers to fill")
    a = ap.parse_args()
    page = a.page.read_text() if a.page else None
    a.out.mkdir(parents=True, exist_ok=True)
    for d in sorted(p.parent for p in a.parent.glob("*/sweep.json")):
        spec = SweepSpec(**dict(read_sweep(d)["spec"], metrics=METRICS))  # today's columns, precision included
        if not gather_sweep(d, spec):
            print(f"{d.name}: no completed entry yet")
            continue
        with Image.open(d / "results.png") as im:
            im.convert("RGB").quantize(64).save(a.out / f"{d.name}.png", optimize=True)
        save_small(curves_figure(d), a.out / f"{d.name}_curves.png")
        if page is not None:
            mark = re.compile(rf"(<!-- begin {re.escape(d.name)} -->\n).*?(<!-- end {re.escape(d.name)} -->)", re.S)
            if not mark.search(page):
                print(f"{a.page}: no markers for {d.name}")
            page = mark.sub(lambda m: m[1] + (d / "compare.md").read_text() + m[2], page)
    tab1 = a.parent / "tab1"
    if (tab1 / "sweep.json").is_file():
        ents = read_sweep(tab1)["entries"]
        pick = {k: ents.get(k) for k in ("V+-V-/seed0", "V+only/seed0")}
        if all(e and e.get("status") == "completed" for e in pick.values()):
            runs = {k.split("/")[0]: tab1 / e["bundle"] for k, e in pick.items()}
            save_small(diag_figure(runs), a.out / "tab1_diag.png")
    if page is not None:
        a.page.write_text(page)
        print(f"{a.page}: tables filled")


if __name__ == "__main__":
    main()
