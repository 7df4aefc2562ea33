"""The packages are layers in data-flow order, and each only imports the layers before it.

The import graph is read from the source with `ast`: every `import`/`from` of `captionkit.*`,
those inside functions included (a function-level import still makes the dependency; it only
hides it). `captionkit.errors` is the floor every layer may use. The cli layer (`cli.py`,
`cli_options.py`, `__main__.py`) and the package root `captionkit/__init__.py` (which re-exports
the public API, `Captioner` included) sit at the top: they may import anything, and no library
module may import them.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"

LAYERS = ("errors", "data", "encoders", "models", "decoding", "metrics", "reranking", "training",
          "evaluation", "reporting", "serving", "cli")  # fmt: skip
"""Lowest first; a module may import its own layer and the ones before it."""
TOP_MODULES = {"captionkit", "captionkit.__main__", "captionkit.cli", "captionkit.cli_options",
               "captionkit.cli_train"}  # fmt: skip


@dataclass(frozen=True)
class Import:
    module: str
    """The importing module, e.g. `captionkit.reporting.report`."""
    target: str
    """The imported `captionkit` module (or the package a name is taken from)."""
    where: str
    """`path:line` of the import statement."""


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _targets(node: ast.AST, module: str, is_package: bool, root: Path) -> list[str]:
    """The `captionkit` modules an import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "captionkit"]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = module.split(".")[: len(module.split(".")) - (node.level - is_package)]
        base = ".".join(package + ([base] if base else []))
    if base.split(".")[0] != "captionkit":
        return []
    # `from captionkit.x import y` imports the module `captionkit.x.y` when there is one
    # (`from captionkit import serving`), else a name defined in `captionkit.x`.
    names = [f"{base}.{a.name}" for a in node.names]
    return [n if _is_module(n, root) else base for n in names]


def import_graph(root: Path) -> list[Import]:
    """Every import of a `captionkit` module by a module under `root/captionkit`."""
    imports = []
    for path in sorted((root / "captionkit").rglob("*.py")):
        module = module_name(path, root)
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _targets(node, module, is_package, root):
                where = f"{path.relative_to(root)}:{node.lineno}"
                imports.append(Import(module, target, where))
    return imports


def layer_of(module: str) -> str:
    """The layer of a `captionkit` module; KeyError for one no layer holds."""
    if module in TOP_MODULES:
        return "cli"
    package = module.split(".")[1]
    if package not in LAYERS:
        raise KeyError(f"{module}: no layer for package '{package}' (add it to LAYERS)")
    return package


def upward_imports(root: Path) -> list[str]:
    """One line per import of a higher layer."""
    found = []
    for imp in import_graph(root):
        here, there = layer_of(imp.module), layer_of(imp.target)
        if LAYERS.index(there) > LAYERS.index(here):
            found.append(f"{imp.where}: {imp.module} ({here}) imports {imp.target} ({there})")
    return found


def package_cycles(root: Path) -> list[list[str]]:
    """Cycles in the graph of layers (packages) importing each other, each as a path
    `[a, b, ..., a]`; one per strongly connected group of packages."""
    edges: dict[str, set[str]] = {}
    for imp in import_graph(root):
        here, there = layer_of(imp.module), layer_of(imp.target)
        if here != there:
            edges.setdefault(here, set()).add(there)
    cycles, reported = [], set()
    for start in sorted(edges):
        path = _path_back(start, start, edges, [start], set())
        if path and not set(path) & reported:
            cycles.append(path)
            reported |= set(path)
    return cycles


def _path_back(node: str, goal: str, edges, path: list[str], seen: set[str]) -> list[str] | None:
    for nxt in sorted(edges.get(node, ())):
        if nxt == goal:
            return [*path, goal]
        if nxt not in seen:
            seen.add(nxt)
            found = _path_back(nxt, goal, edges, [*path, nxt], seen)
            if found:
                return found
    return None


def test_every_module_has_a_layer():
    modules = {imp.module for imp in import_graph(SOURCE)} | {
        module_name(p, SOURCE) for p in (SOURCE / "captionkit").rglob("*.py")
    }
    unplaced = []
    for module in sorted(modules):
        try:
            layer_of(module)
        except KeyError as e:
            unplaced.append(str(e))
    assert not unplaced, "\n".join(unplaced)


def test_no_module_imports_a_higher_layer():
    found = upward_imports(SOURCE)
    assert not found, "imports against the data flow:\n" + "\n".join(found)


def test_packages_form_no_cycle():
    assert package_cycles(SOURCE) == []


def test_the_graph_sees_the_real_imports():
    """Guards the checker against reading nothing: known downward imports are in the graph."""
    edges = {(layer_of(i.module), layer_of(i.target)) for i in import_graph(SOURCE)}
    assert {("training", "metrics"), ("reporting", "evaluation"), ("serving", "reporting"),
            ("cli", "serving"), ("models", "data")} <= edges  # fmt: skip


def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in {"captionkit/__init__.py": "", "captionkit/errors.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A small tree with every kind of upward import, beside allowed ones."""
    return _plant(tmp_path, {
        "captionkit/data/__init__.py": "from captionkit.errors import CaptionkitError\n",
        "captionkit/data/records.py": "import captionkit.data\n",
        "captionkit/data/hidden.py": """
            def lazily():
                from captionkit.serving.app import create_app  # hidden in a function
                return create_app
        """,
        "captionkit/models/__init__.py": "from captionkit import serving\n",
        "captionkit/models/relative.py": "from ..training import train\n",
        "captionkit/metrics/root.py": "from captionkit import Captioner\n",
        "captionkit/training/__init__.py": "",
        "captionkit/training/train.py": "from captionkit.metrics.root import x\n",
        "captionkit/serving/__init__.py": "",
        "captionkit/serving/app.py": "import captionkit.data.records\n",
        "captionkit/cli.py": "from captionkit.serving.app import create_app\n",
    })  # fmt: skip


def test_checker_finds_each_planted_upward_import(planted: Path):
    found = upward_imports(planted)
    assert found == [
        "captionkit/data/hidden.py:3: captionkit.data.hidden (data) imports "
        "captionkit.serving.app (serving)",
        "captionkit/metrics/root.py:1: captionkit.metrics.root (metrics) imports captionkit (cli)",
        "captionkit/models/__init__.py:1: captionkit.models (models) imports "
        "captionkit.serving (serving)",
        "captionkit/models/relative.py:1: captionkit.models.relative (models) imports "
        "captionkit.training.train (training)",
    ]


def test_checker_finds_a_planted_cycle(planted: Path):
    # serving -> data (allowed) and data -> serving (planted) close a loop
    assert ["data", "serving", "data"] in package_cycles(planted)


def test_checker_passes_a_clean_tree(tmp_path: Path):
    _plant(tmp_path, {
        "captionkit/data/__init__.py": "from captionkit.errors import CaptionkitError\n",
        "captionkit/serving/app.py": "from captionkit.data import x\nimport captionkit.errors\n",
        "captionkit/cli.py": "from captionkit.serving.app import create_app\n",
    })  # fmt: skip
    assert upward_imports(tmp_path) == [] and package_cycles(tmp_path) == []


def test_checker_refuses_a_package_without_a_layer(tmp_path: Path):
    _plant(tmp_path, {"captionkit/plugins/x.py": "import captionkit.errors\n"})
    with pytest.raises(KeyError, match="no layer for package 'plugins'"):
        upward_imports(tmp_path)
