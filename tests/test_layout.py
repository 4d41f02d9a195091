"""Imports flow one way: no module imports a higher layer than its own, and no modules import each other.

Every import counts, at the top of a module and inside functions, relative and absolute. A module may import
its own layer or lower ones; within a layer, the circle check orders them. docs/index.md shows the same table.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "imvedit"

# Lowest first. A module's layer is that of its longest name below; every module must have one.
LAYERS = {
    # 0 what everything uses: the version, the one error type, file writes that cannot leave half a file
    "imvedit": 0,
    "imvedit.errors": 0,
    "imvedit.fsutil": 0,
    "imvedit.jsonutil": 0,
    # 1 frames and pixels, without a model: video/image files, the shapes world, pixel metrics, contact sheets
    "imvedit.video": 1,
    "imvedit.toy": 1,
    "imvedit.evaluation.metrics": 1,
    "imvedit.evaluation.images": 1,
    # 2 the model: bases, the adapter and its file, loading them; the toy bundle builds a base
    "imvedit.models": 2,
    "imvedit.toy.bundle": 2,
    # 3 inference
    "imvedit.pipeline": 3,
    # 4 memory plans, which measure the pipeline's pieces
    "imvedit.memory": 4,
    "imvedit.training.plan": 4,
    # 5 the library of the commands that stand alone: prepare (with its cache), edit, the ComfyUI nodes
    "imvedit.data": 5,
    "imvedit.editing": 5,
    "imvedit.comfyui": 5,
    # 6 commands built on those: train reads prepared data, batch runs edits, export writes the ComfyUI shim,
    # the dry run plans an edit
    "imvedit.training": 6,
    "imvedit.editing.batch": 6,
    "imvedit.export": 6,
    "imvedit.memory.dry_run": 6,
    # 7 evaluation prepares, trains and edits to score; the toy pretraining scores itself with the bench
    "imvedit.evaluation": 7,
    "imvedit.toy.pretrain": 7,
    "imvedit.toy.pretrain_text": 7,
    "imvedit.toy.binding": 7,
    # 8 the command line
    "imvedit.cli": 8,
    "imvedit.__main__": 8,
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = path
    return mods


def _layer(module: str) -> int:
    name = module
    while name not in LAYERS or (name == "imvedit" and module != "imvedit"):
        assert "." in name, f"{module} has no layer: add it (or its package) to LAYERS here and in docs/index.md"
        name = name.rpartition(".")[0]
    return LAYERS[name]


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the imvedit modules it imports (a package's own __init__ counts as the package)."""
    edges = {}
    for module, path in mods.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    targets.add(name)
        edges[module] = targets
    return edges


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that reach each other (strongly connected components of more than one)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def test_no_import_circles():
    edges = _imports(_modules())
    # a package's __init__ may re-export its own modules: that is not a circle
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}
    circles = _circles(edges)
    assert not circles, "modules that import each other: " + "; ".join(" <-> ".join(c) for c in circles)


def test_imports_flow_down_the_layers():
    mods = _modules()
    upward = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m, targets in sorted(_imports(mods).items())
        for t in sorted(targets)
        if _layer(t) > _layer(m)
    ]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_docs_show_the_same_layers():
    """docs/index.md's layer table lists the same names at the same layers as LAYERS above, and every file it
    names is in the tree."""
    text = (ROOT / "docs" / "index.md").read_text()
    documented = {}
    for layer, cell in re.findall(r"^\| (\d+) \|[^|]*\| (.+?) \|$", text, re.M):
        for path in re.findall(r"`([\w/.]+)`", cell):
            name = "imvedit" if path == "imvedit/__init__.py" else path.removesuffix(".py").rstrip("/")
            documented[name.replace("/", ".")] = int(layer)
    assert documented == LAYERS
    missing = [p for p in re.findall(r"`(imvedit/[\w/.]*)`", text) if not (ROOT / p).exists()]
    assert not missing, f"docs/index.md names files that are not in the tree: {missing}"


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_docs_files_table_covers_every_module():
    """Every module of the package is in docs/index.md's files table, by its own path or its folder's."""
    text = (ROOT / "docs" / "index.md").read_text()
    table = text[text.index("| where | what |") :].split("\n\n")[0]
    named = set(re.findall(r"`(imvedit/[\w/.]*)`", table))
    files = [p.relative_to(ROOT).as_posix() for p in (ROOT / "imvedit").rglob("*.py") if p.name != "__init__.py"]
    files = [f for f in files if f != "imvedit/__main__.py"]
    missing = [f for f in files if f not in named and not any(f.startswith(n) and n.endswith("/") for n in named)]
    assert not missing, f"docs/index.md's files table does not name: {missing}"
