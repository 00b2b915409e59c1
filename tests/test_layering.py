"""The import layering the README's layout section describes, checked on the source.

Every ``sparkrec`` import counts, including those inside functions (a lazy import is still a
dependency). A package may import only packages of a lower layer; so no two packages import
each other, and serving code does not pull in the training loop.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sparkrec"

# Lower numbers sit below higher ones. Same number: independent of each other.
LAYERS: dict[str, int] = {
    "errors": 0, "logs": 0, "linalg": 0, "ragged": 0, "listmetrics": 0, "selection": 0, "cooccurrence": 0,
    "ranking": 1, "config": 1, "schemas": 2, "session": 2, "arrowframes": 2,
    "lake": 3, "ingest": 4, "preflight": 5, "features": 5, "holdout": 6, "text": 6,
    "model": 7, "baselines": 8, "recommend": 9,
    "stream": 10, "serve": 10, "evaluation": 11,
    "cli": 12, "notebook": 13, "__main__": 13, "__init__": 13,
}
# Modules serving code must not import: the training loop and what it drags in.
TRAINING_ONLY = {"sparkrec.model.worker", "sparkrec.model.job", "sparkrec.model.distributed"}
SERVING = ("sparkrec/recommend/", "sparkrec/serve/", "sparkrec/model/registry.py", "sparkrec/model/store.py",
           "sparkrec/model/build.py", "sparkrec/baselines/saved.py")


def _imports(path: Path) -> list[str]:
    """Absolute ``sparkrec.*`` module names ``path`` imports (relative imports resolved)."""
    package = list(path.relative_to(ROOT.parent).parts[:-1])  # a module's and an __init__'s package alike
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = [*base, *(node.module.split(".") if node.module else [])]
            elif (node.module or "").startswith("sparkrec"):
                module = node.module.split(".")
            else:
                continue
            if node.module is None or len(module) == 1:  # `from . import x`: x is a module or package
                out += [".".join([*module, a.name]) for a in node.names]
            else:
                out.append(".".join(module))
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("sparkrec.")]
    return out


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[tuple[str, str]]]:
    edges: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        source = rel.parts[0].removesuffix(".py") if len(rel.parts) == 1 else rel.parts[0]
        for module in _imports(path):
            target = _top(module)
            if target != source:
                edges[source].add((target, str(rel)))
    return edges


def test_every_package_has_a_layer():
    packages = {p.name.removesuffix(".py") for p in ROOT.iterdir()
                if (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert packages - set(LAYERS) == set(), "add new packages to LAYERS (and the README's layout section)"


def test_packages_import_only_lower_layers():
    wrong = sorted(f"{source} ({where}) imports {target}"
                   for source, targets in _graph().items() for target, where in targets
                   if target in LAYERS and LAYERS[target] >= LAYERS[source])
    assert wrong == []


def test_no_two_packages_import_each_other():
    graph = {s: {t for t, _ in ts} for s, ts in _graph().items()}
    assert sorted((a, b) for a in graph for b in graph[a] if a < b and a in graph.get(b, set())) == []


@pytest.mark.parametrize("prefix", SERVING)
def test_serving_code_does_not_import_the_training_loop(prefix):
    files = list((ROOT.parent / prefix).rglob("*.py")) if prefix.endswith("/") else [ROOT.parent / prefix]
    assert all(f.exists() for f in files) and files, prefix
    bad = sorted(f"{p.relative_to(ROOT.parent)} imports {m}" for p in files for m in _imports(p)
                 if m in TRAINING_ONLY)
    assert bad == []


def _calls_of(path: Path, name: str) -> int:
    return sum(1 for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)
               and getattr(node.func, "attr", getattr(node.func, "id", None)) == name)


def test_list_ranking_formulas_live_in_one_module():
    """A list's NDCG/MAP discount is written once (listmetrics); the evaluator and the trainer's
    validation both call it. The per-event metrics (prequential hit rank, novelty) are not list
    metrics and keep their own log2."""
    event_level = {"evaluation/metrics.py", "stream/prequential.py"}
    writers = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                     if _calls_of(p, "log2") and str(p.relative_to(ROOT)) not in event_level)
    assert writers == ["listmetrics.py"]
    callers = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if _calls_of(p, "list_metrics"))
    assert callers == ["model/validation.py", "ranking.py"]
