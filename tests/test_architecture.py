"""The package's layers, read from the code: imports point downwards only and no modules import each other in a
circle (ARCHITECTURE.md, "Layers"). Every `import` and `from ... import` in labkit counts, function-local ones too."""

import ast
from pathlib import Path

import pytest

import labkit

PKG = Path(labkit.__file__).resolve().parent

# Lowest first. A module may import from its own layer (without circles) and from any layer below it.
LAYERS = ["labkit", "labkit.core", "labkit.techniques", "labkit.serve", "labkit.serve.api", "labkit.lessons",
          "labkit.course", "labkit.__main__"]
MAX_LINES = 500


def _modules(root: Path = PKG) -> dict[str, Path]:
    out = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _targets(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The labkit modules `name` imports (a package's __init__ counts as the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        cands = []
        if isinstance(node, ast.Import):
            cands = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            cands = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        for c in cands:
            while c and c not in mods and "." in c:
                c = c.rsplit(".", 1)[0]
            if c in mods and c != name and c.startswith("labkit"):
                found.add(c)
    return found


def graph(root: Path = PKG) -> dict[str, set[str]]:
    mods = _modules(root)
    return {m: _targets(m, p, mods) for m, p in mods.items()}


def layer(mod: str) -> int:
    best = 0
    for i, prefix in enumerate(LAYERS):
        if mod == prefix or mod.startswith(prefix + "."):
            if len(prefix) >= len(LAYERS[best]):
                best = i
    return best


def upward(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {t}" for m, ts in g.items() for t in ts
                  if layer(t) > layer(m) and not (m == "labkit" or t.startswith(m + ".")))


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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


def test_imports_point_down():
    assert upward(graph()) == []


def test_no_import_circles():
    g = graph()
    # A package __init__ that re-exports its own modules is not a circle with them.
    mods = _modules()
    g = {m: {t for t in ts if not (m.startswith(t + ".") and mods[t].name == "__init__.py")} for m, ts in g.items()}
    assert cycles(g) == []


def test_every_module_sits_in_a_layer_folder():
    flat = [m for m in _modules() if m.count(".") == 1 and m != "labkit.__main__" and m not in LAYERS]
    assert flat == [], "a module directly under labkit/ belongs in one of the layer folders"


@pytest.mark.parametrize("mod", sorted(_modules()))
def test_no_module_over_its_size(mod):
    n = len(_modules()[mod].read_text().splitlines())
    assert n <= MAX_LINES, f"{mod} has {n} lines: split it by job (ARCHITECTURE.md)"


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The graph reader sees a circle, an upward import and a function-local import in a made-up package."""
    pkg = tmp_path / "labkit"
    for sub in ("core", "lessons"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from labkit.lessons import x\n")
    (pkg / "lessons" / "x.py").write_text("from labkit.lessons import y\n")
    (pkg / "lessons" / "y.py").write_text("import labkit.lessons.x\n")
    g = graph(pkg)
    assert upward(g) == ["labkit.core.a -> labkit.lessons.x"]
    assert cycles(g) == [["labkit.lessons.x", "labkit.lessons.y"]]


MAX_CELL_LINES = 15


def code_lines(source: str) -> int:
    return sum(1 for line in source.splitlines() if line.strip() and not line.strip().startswith("#"))


@pytest.mark.parametrize("nb", sorted((PKG.parent / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_cells_stay_short(nb):
    """A notebook cell longer than 15 code lines belongs in labkit (the parameters cell excepted)."""
    import json

    long = [(i, code_lines("".join(c["source"]))) for i, c in enumerate(json.loads(nb.read_text())["cells"])
            if c["cell_type"] == "code" and "parameters" not in c.get("metadata", {}).get("tags", [])
            and code_lines("".join(c["source"])) > MAX_CELL_LINES]
    assert long == [], f"cells (index, code lines) over {MAX_CELL_LINES}: move the code into labkit"


def test_code_lines_counts_code_only():
    assert code_lines("# a comment\n\nx = 1\n  # indented comment\ny = 2\n") == 2
