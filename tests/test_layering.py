"""The package's layering, read from the source with `ast` (nothing is imported):

(a) no import cycle among the package's modules, counting imports inside functions;
(b) no function-local import of a package module (they hide cycles and make import cost unpredictable);
(c) `models/` depends on none of the converters, pipeline, training, sharded loading, verify, bench or CLIs;
(d) the sharding rules (what models import) depend on nothing of the package but errors and the state views;
(e) every .py file is under MAX_LINES lines.

Edges are explicit imports only: `import a.b`, `import a.b as c`, `from a.b import c` (an edge to the module
`a.b.c` if there is one, else to `a.b`) and relative forms. Importing `a.b` also runs `a/__init__.py`, but that
implicit edge is left out: every module would otherwise depend on `wan22_jax/__init__.py`, which imports the
public API, while Python runs a parent package's `__init__` before its submodules in any case.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

PACKAGE = "wan22_jax"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 600

# What `models/` must not reach (directly or through other modules): prefixes of module names.
MODELS_FORBIDDEN = ("wan22_jax.convert", "wan22_jax.pipeline", "wan22_jax.training", "wan22_jax.sharding.loading",
                    "wan22_jax.sharding.memory", "wan22_jax.sharding.distributed", "wan22_jax.verify",
                    "wan22_jax.bench", "wan22_jax.cli", "wan22_jax.generate_cli", "wan22_jax.train_cli",
                    "wan22_jax.__main__", "wan22_jax.presets")
RULES_MODULE = "wan22_jax.sharding.rules"
RULES_ALLOWED = {"wan22_jax.errors", "wan22_jax.state"}


# ----------------------------------------------------------------------------------------------- the checker
@dataclasses.dataclass(frozen=True)
class Import:
    """One import statement's edge: `source` (file:line) imports the package module `target`."""

    source: str
    target: str
    path: Path
    line: int
    local: bool  # inside a function or lambda body

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every .py file under `root` (the folder of `package`)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (package, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module name of `from <level dots><name> import ...` written in `module`."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(module: str, path: Path, root: Path, modules: dict[str, Path], package: str) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def add(target: str, node: ast.stmt, local: bool):
        if target == package or target.startswith(package + "."):
            # `import wan22_jax.x.y` names a module; keep the longest prefix that is one
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            edge = Import(module, target, path.relative_to(root.parent), node.lineno, local)
            if edge not in found:  # `from a import b, c` is one edge when b and c are not modules
                found.append(edge)

    def visit(node: ast.AST, local: bool):
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child, local)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(module, is_package, child.level, child.module)
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    add(sub if sub in modules else base, child, local)
            visit(child, inner)

    visit(tree, False)
    return found


def import_graph(root: Path, package: str) -> dict[str, list[Import]]:
    """{module: its imports of package modules} for every module of the package under `root`."""
    modules = package_modules(root, package)
    return {m: _imports(m, p, root, modules, package) for m, p in modules.items()}


def find_cycles(graph: dict[str, list[Import]]) -> list[list[Import]]:
    """One cycle (as its edges) per strongly connected component that has one (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str):  # recursive: the package is a few hundred modules deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for edge in graph.get(v, ()):
            w = edge.target
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1 or any(e.target == v for e in graph.get(v, ())):
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_in(graph, comp) for comp in components]


def _cycle_in(graph: dict[str, list[Import]], comp: set[str]) -> list[Import]:
    """The shortest cycle through the component's first module (breadth-first, inside the component)."""
    start = min(comp)
    parent: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for edge in graph.get(v, ()):
                if edge.target not in comp:
                    continue
                if edge.target == start:
                    path = [edge]
                    while path[0].source != start:
                        path.insert(0, parent[path[0].source])
                    return path
                if edge.target not in parent:
                    parent[edge.target] = edge
                    nxt.append(edge.target)
        frontier = nxt
    raise AssertionError(f"no cycle found in the component {sorted(comp)}")


def reachable(graph: dict[str, list[Import]], start: str) -> dict[str, list[Import]]:
    """{module: the chain of imports from `start` to it} for every module `start` depends on."""
    chains: dict[str, list[Import]] = {start: []}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for edge in graph.get(v, ()):
                if edge.target not in chains:
                    chains[edge.target] = chains[v] + [edge]
                    nxt.append(edge.target)
        frontier = nxt
    del chains[start]
    return chains


def _chain(edges: list[Import]) -> str:
    return " -> ".join([edges[0].source] + [f"{e.target} ({e.where()})" for e in edges])


# ----------------------------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    return import_graph(ROOT, PACKAGE)


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (function-local imports included):\n" + "\n".join(
        "  " + _chain(c) for c in cycles)


def test_no_function_local_imports_of_the_package(graph):
    local = [e for edges in graph.values() for e in edges if e.local]
    assert not local, "function-local imports of package modules (import them at module top):\n" + "\n".join(
        f"  {e.where()}: {e.source} imports {e.target}" for e in local)


def test_models_do_not_depend_on_loading_pipeline_training_or_tools(graph):
    bad = []
    for module in sorted(m for m in graph if m.startswith(f"{PACKAGE}.models.") or m == f"{PACKAGE}.models"):
        for target, chain in sorted(reachable(graph, module).items()):
            if any(target == f or target.startswith(f + ".") for f in MODELS_FORBIDDEN):
                bad.append(_chain(chain))
    assert not bad, "models/ reaches modules it must not depend on:\n" + "\n".join(f"  {b}" for b in bad)


def test_sharding_rules_depend_only_on_errors_and_state(graph):
    assert RULES_MODULE in graph, f"{RULES_MODULE} is missing"
    bad = [_chain(chain) for target, chain in sorted(reachable(graph, RULES_MODULE).items())
           if target not in RULES_ALLOWED]
    # the package namespace re-exports the rules only, so `from wan22_jax.sharding import shard` stays cheap
    init = f"{PACKAGE}.sharding"
    bad += [f"{e.where()}: {init} imports {e.target}" for e in graph.get(init, ()) if e.target != RULES_MODULE]
    assert not bad, "the sharding rules pull in more of the package than errors and state:\n" + "\n".join(
        f"  {b}" for b in bad)


def test_files_are_short():
    long = [f"{p.relative_to(ROOT.parent)}: {n} lines" for p in sorted(ROOT.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) >= MAX_LINES]
    assert not long, f"files of {MAX_LINES} lines or more (split them by concept):\n" + "\n".join(
        f"  {x}" for x in long)


# ----------------------------------------------------------------------------------------------- the checker's teeth
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_a_cycle_through_a_local_relative_import(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "a.py": "import pkg.sub.b as b\n",
        "sub/__init__.py": "",
        "sub/b.py": "import os\n\ndef f():\n    from .. import a\n    return a\n",
        "c.py": "from pkg import a\n",  # depends on the cycle but is not part of it
    })
    graph = import_graph(root, "pkg")
    assert [(e.target, e.local) for e in graph["pkg.sub.b"]] == [("pkg.a", True)]
    cycles = find_cycles(graph)
    assert len(cycles) == 1
    assert [(e.source, e.target) for e in cycles[0]] == [("pkg.a", "pkg.sub.b"), ("pkg.sub.b", "pkg.a")]
    assert "pkg.a -> pkg.sub.b (" in _chain(cycles[0])


def test_checker_finds_no_cycle_in_a_layered_tree_and_follows_chains(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "from pkg.top import run\n",
        "top.py": "from .mid import helper\nfrom pkg.low import leaf as L\n\ndef run():\n    import json\n",
        "mid.py": "from . import low\n",
        "low/__init__.py": "",
        "low/leaf.py": "import numpy\n",
    })
    graph = import_graph(root, "pkg")
    assert find_cycles(graph) == []
    assert not [e for edges in graph.values() for e in edges if e.local]  # `import json` is not the package's
    assert {e.target for e in graph["pkg.top"]} == {"pkg.mid", "pkg.low.leaf"}
    chains = reachable(graph, "pkg")
    assert [e.target for e in chains["pkg.low"]] == ["pkg.top", "pkg.mid", "pkg.low"]
