"""The import contract of the design guide (layering), checked on the exported package with `ast`.

Layers, lowest first; a module may import its own layer and the layers below it, never above:
  core            seeding, devices, atomic files, hashing, RNG capture, EMA / warm-up, figure saving
  paper           the method as code (drift, features, generator*, mae, queues, toy): torch, core and each other
  infrastructure  run bundles and their checks (provenance, fingerprint, smoke, bundle): core only
  pipeline        data, tokenizer, latent caches, metrics, the two trainers, sampling, run helpers (runs)
  cli             the command line, on top
Every import counts, module-level or inside a function (a lazy import is still an edge), and no circle is allowed.
"""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "drifting"

LAYERS = {
    "core": 0, "hub": 0,
    "drift": 1, "drift_exact": 1, "features": 1, "generator": 1, "generator_blocks": 1, "mae": 1, "queues": 1, "toy": 1,
    "drift_triton": 1,  # the fused drift kernel: torch and `drift` only (Triton is imported lazily, `drift_exact` calls it)
    "provenance": 2, "fingerprint": 2, "smoke": 2, "bundle": 2, "writers": 2, "lifecycle": 2,
    "data": 3, "folders": 3, "streams": 3, "latents": 3, "feature_nets": 3, "latent_cache": 3, "mae_train": 3, "mae_resume": 3,
    "tokenizer": 3, "builtin_vae": 3, "metrics": 3, "metrics_nets": 3, "evaluate": 3, "stream": 3, "trend": 3,
    "train": 3,
    "sample": 3, "runs": 3, "sweep": 3, "official": 3, "pipeline": 3, "distributed": 3, "planner": 3,
    "cli": 4,
}
NAMES = {0: "core", 1: "paper", 2: "infrastructure", 3: "pipeline", 4: "cli"}


def modules() -> list[str]:
    return sorted(p.stem for p in PKG.glob("*.py") if not p.stem.startswith("_"))


def imports_of(mod: str) -> set[str]:
    "The `drifting` modules that `mod` imports anywhere in its file (relative or absolute)."
    out = set()
    for node in ast.walk(ast.parse((PKG / f"{mod}.py").read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1: names = [base] if base else [a.name for a in node.names]
            elif base == "drifting": names = [a.name for a in node.names]
            elif base.startswith("drifting."): names = [base.split(".")[1]]
            else: continue
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("drifting.")]
        else: continue
        out |= {n for n in names if (PKG / f"{n}.py").exists() and n != mod}
    return out


def graph() -> dict[str, set[str]]:
    return {m: imports_of(m) for m in modules()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    "The strongly connected components with more than one module (Tarjan)."
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    for v in sorted(g):
        if v not in index: visit(v)
    return out


def test_every_module_has_a_layer():
    missing = [m for m in modules() if m not in LAYERS]
    assert missing == [], f"give {missing} a layer in tests/test_layering.py (and in the design guide's layering)"


def test_no_import_circles():
    assert cycles(graph()) == []


def test_imports_go_down_the_layers():
    bad = [f"{m} ({NAMES[LAYERS[m]]}) imports {d} ({NAMES[LAYERS[d]]})"
           for m, deps in graph().items() for d in sorted(deps) if LAYERS.get(d, 99) > LAYERS.get(m, -1)]
    assert bad == [], "\n".join(bad)


def test_infrastructure_imports_no_pipeline_or_paper():
    infra = [m for m in modules() if LAYERS.get(m) == 2]
    bad = {m: sorted(d for d in imports_of(m) if LAYERS[d] not in (0, 2)) for m in infra}
    assert all(not v for v in bad.values()), bad
    assert not imports_of("provenance") & {"train", "metrics", "metrics_nets", "cli"}


def test_the_checker_sees_lazy_imports_and_circles():
    "The checker itself: a function-level import is an edge, and a two-module loop is reported."
    tree = ast.parse("def f():\n    from drifting.train import Trainer\n")
    assert any(isinstance(n, ast.ImportFrom) and n.module == "drifting.train" for n in ast.walk(tree))
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
