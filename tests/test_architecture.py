"""The architecture as code can check it: the import graph of shmrt has no
cycle, the runtime never imports the benchmark, the parallel layer knows no
models, and every source file stays short enough to read in one sitting.

The graph is read from the sources (every import statement, at module level
or inside a function), not from sys.modules, so an import that runs only on
one path still counts.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = {"shmrt": os.path.join(ROOT, "shmrt"), "shmrt.kernels": os.path.join(ROOT, "kernels")}
MAX_LINES = 500


def modules() -> dict:
    """{dotted module name: path} of every source file of shmrt and its kernels."""
    out = {}
    for pkg, base in SOURCES.items():
        for dirpath, dirnames, names in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in names:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, name), base)[:-3].replace(os.sep, ".")
                    mod = pkg if rel == "__init__" else f"{pkg}.{rel.removesuffix('.__init__')}"
                    out[mod] = os.path.join(dirpath, name)
    return out


def imports_of(mod: str, path: str, known: set) -> set:
    """The shmrt modules that mod imports (explicitly: a package's own
    __init__ counts only when a name is taken from it)."""
    is_pkg = path.endswith("__init__.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known:
                    out.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod if is_pkg else mod.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                src = f"{base}.{node.module}" if node.module else base
            else:
                src = node.module or ""
            for a in node.names:
                if f"{src}.{a.name}" in known:
                    out.add(f"{src}.{a.name}")
                elif src in known:
                    out.add(src)
    out.discard(mod)
    return out


def graph() -> dict:
    mods = modules()
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def cycles(g: dict) -> list:
    """The strongly connected components of g with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_graph_is_read():
    g = graph()
    assert "shmrt.exec.executor" in g["shmrt.compile.cost"] or "shmrt.compile.isa" in g["shmrt.compile.cost"]
    assert "shmrt.kernels" in g["shmrt.exec.executor"]


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles (each a set of modules that import each other): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_cycle_detector_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("layer, forbidden", [
    ("shmrt.", "shmrt.bench"),  # the runtime never imports the benchmark
    ("shmrt.parallel", "shmrt.ir"), ("shmrt.parallel", "shmrt.compile"), ("shmrt.parallel", "shmrt.frontends"),
    ("shmrt.kernels", "shmrt."),  # kernels know nothing of the runtime
    ("shmrt.ir", "shmrt.compile"), ("shmrt.ir", "shmrt.exec"), ("shmrt.ir", "shmrt.parallel"),
    ("shmrt.ir", "shmrt.frontends"),
    ("shmrt.frontends", "shmrt.compile"), ("shmrt.frontends", "shmrt.exec"), ("shmrt.frontends", "shmrt.parallel"),
    # the stages below the public API never reach up into it (calibration is handed a Runtime, it imports none)
    ("shmrt.ir", "shmrt.runtime"), ("shmrt.frontends", "shmrt.runtime"), ("shmrt.compile", "shmrt.runtime"),
    ("shmrt.exec", "shmrt.runtime"), ("shmrt.parallel", "shmrt.runtime"),
])
def test_layering(layer, forbidden):
    bad = sorted((m, i) for m, deps in graph().items() if m.startswith(layer) and not m.startswith("shmrt.bench")
                 for i in deps if i.startswith(forbidden) and not (layer == "shmrt.kernels" and
                                                                  i.startswith("shmrt.kernels")))
    assert not bad, f"{layer} must not import {forbidden}: " + ", ".join(f"{m} imports {i}" for m, i in bad)


def test_every_package_is_installed():
    """pyproject.toml lists its packages by hand (kernels/ installs as shmrt.kernels): a new
    subpackage left out of the list would be missing from every installed copy."""
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    packages = {m for m, p in modules().items() if p.endswith("__init__.py")}
    assert packages == listed, f"in the tree, not in pyproject.toml: {sorted(packages - listed)}; " \
                               f"listed, not in the tree: {sorted(listed - packages)}"


def test_files_are_short():
    long = {m: n for m, p in modules().items() if (n := sum(1 for _ in open(p))) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"
