"""Imports point one way: the file-level import graph of ``src/psrl`` has no cycle, and no package imports one of a
higher layer. Every ``import`` statement counts, the ones inside functions too (a lazy import is still a
dependency). Run as a script to print the graph's cycles and upward edges:
``python tests/test_layers.py [SRC_DIR]``.

The layers, lowest first, as the code stands (a package may import its own modules and any lower layer):

0. ``core``: ``errors`` (imports nothing of psrl), ``registry``, ``fileio``, ``images``, ``seeding``, ``sharding``,
   ``chat``, ``config``;
1. ``data``: ``Record`` and its JSONL I/O;
2. ``sampling``: ``SamplingConfig`` and the pure sampling math;
3. ``models``: policies, LoRA, loaders, tiny components;
4. ``rewards``: rewards use the models' tiny builders and Qwen processors, models never use rewards;
5. ``rl``: the trainers;
6. ``bench``, ``datagen``, ``serve``: applications of the layers below, independent of each other;
6b. ``reward_model`` (on datagen) and ``world`` (the pocket world, on bench, rewards and rl), independent;
7. ``cli``: the commands;
8. ``__main__``: ``python -m psrl``.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[set[str]] = [
    {"errors", "cache", "registry", "fileio", "images", "config", "seeding", "sharding", "chat", "hub", "model_card",
     "__init__"},
    {"data"},
    {"sampling"},
    {"models"},
    {"rewards"},
    {"rl"},
    {"bench", "datagen", "serve", "push"},
    {"reward_model", "world"},  # reward_model builds on datagen's resumable stages; world on bench, rewards, rl
    {"cli"},
    {"__main__"},
]


def module_files(src: Path) -> dict[str, Path]:
    """``psrl.x.y`` -> its file, for every ``.py`` under ``src`` (a package is its ``__init__.py``)."""
    mods = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """``module -> modules of psrl it imports``, from every ``import`` / ``from ... import`` in the file's AST
    (function bodies included; relative imports resolved). ``from psrl.a import b`` is an edge to ``psrl.a.b`` when
    that is a module, else to ``psrl.a``."""
    mods = module_files(src)

    def owner(name: str) -> str | None:  # the longest module prefix of a dotted name
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {owner(a.name) for a in node.names if a.name.split(".")[0] == "psrl"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.split(".")[0] != "psrl":
                    continue
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else owner(base) for a in node.names}
        graph[mod] = targets - {None, mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (iterative Tarjan), as
    ``[a, b, ..., a]``; empty when the graph is acyclic."""
    index, low, on_stack, stack, comps, counter = {}, {}, set(), [], [], 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        comp.append(member)
                        if member == node:
                            break
                    if len(comp) > 1:
                        comps.append(set(comp))
    found = []
    for comp in comps:  # a shortest path from the component's first module back to itself
        start = min(comp)
        prev, frontier = {start: None}, [start]
        while frontier and start not in [c for n in frontier for c in graph[n]]:
            nxt = []
            for n in frontier:
                for c in sorted(graph[n] & comp):
                    if c not in prev:
                        prev[c] = n
                        nxt.append(c)
            frontier = nxt
        last = next(n for n in frontier if start in graph[n])
        path = [start]
        while last is not None:
            path.append(last)
            last = prev[last]
        found.append(path[::-1])
    return found


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for level, names in enumerate(LAYERS):
        if top in names:
            return level
    raise KeyError(f"{module}: package {top!r} is in no layer of tests/test_layers.py; add it to LAYERS")


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    """Imports into a higher layer, or into another package of the same layer above ``core``."""
    bad = []
    for mod, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = layer_of(mod), layer_of(target)
            top_a, top_b = mod.split(".")[1:2], target.split(".")[1:2]
            if b > a or (a == b and a > 0 and top_a != top_b):
                bad.append(f"{mod} (layer {a}) imports {target} (layer {b})")
    return bad


def test_every_package_has_a_layer():
    for mod in import_graph():
        layer_of(mod)


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_layer_imports_a_higher_one():
    bad = upward_edges(import_graph())
    assert not bad, "\n".join(bad)


def test_errors_is_the_bottom():
    assert import_graph()["psrl.errors"] == set()


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The checker itself: absolute, ``from`` (module and name), relative and function-level imports are edges,
    and a two-module cycle and an upward import are reported."""
    pkg = tmp_path / "psrl"
    (pkg / "data").mkdir(parents=True)
    (pkg / "rl").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "rl" / "__init__.py").write_text("")
    (pkg / "data" / "records.py").write_text("def f():\n    from psrl.rl import trainer\n")
    (pkg / "data" / "checks.py").write_text("from . import records\nimport psrl.data.records\n")
    (pkg / "rl" / "trainer.py").write_text("from psrl.data.records import f\nfrom ..data import records as r\n")
    (pkg / "rl" / "loop.py").write_text("from .. import data\n")
    graph = import_graph(tmp_path)
    assert graph["psrl.data.checks"] == {"psrl.data.records"}
    assert graph["psrl.rl.trainer"] == {"psrl.data.records"}
    assert graph["psrl.rl.loop"] == {"psrl.data"}
    assert graph["psrl.data.records"] == {"psrl.rl.trainer"}
    assert cycles(graph) == [["psrl.data.records", "psrl.rl.trainer", "psrl.data.records"]]
    assert upward_edges(graph) == ["psrl.data.records (layer 1) imports psrl.rl.trainer (layer 5)"]


if __name__ == "__main__":
    graph = import_graph(Path(sys.argv[1]) if len(sys.argv) > 1 else SRC)
    found, bad = cycles(graph), upward_edges(graph)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} import edges")
    print(f"{len(found)} import cycles" + "".join(f"\n  {' -> '.join(c)}" for c in found))
    print(f"{len(bad)} upward imports" + "".join(f"\n  {b}" for b in bad))
    sys.exit(1 if found or bad else 0)
