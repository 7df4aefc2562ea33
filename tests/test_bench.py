"""bench/ is a set of tools over captionkit's public API, and bench/results/ holds the results
files BENCHMARKS.md cites, no more and no fewer.

The scripts are read with `ast`, never imported or run (as `tests/test_layers.py` reads the
package): a private name is a `captionkit` name starting with one underscore, used through
`from captionkit... import _name`, an import of a module path with a private part, or an
attribute `_name` of a name such an import bound.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
BENCHMARKS = ROOT / "BENCHMARKS.md"

NOT_YET_MEASURED = {"bench/results/gpu.json"}
"""Results files BENCHMARKS.md names before they exist (`make gpu-check` writes gpu.json on a
machine with a GPU)."""

SHARED_MODULES = {"common", "naive_decoders"}
"""The bench modules other bench scripts may import: the shared helpers, the naive reference
decoders of bench_training.py."""

CITED = re.compile(r"bench/results/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*\.[a-z]+")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_captionkit(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] == "captionkit"


def private_uses(source: str, filename: str = "<bench>") -> list[str]:
    """`LINE: what` for every use of a private `captionkit` name in `source`."""
    tree = ast.parse(source, filename)
    found, bound = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _is_captionkit(alias.name):
                    continue
                if any(_private(part) for part in alias.name.split(".")):
                    found.append(f"{node.lineno}: import {alias.name}")
                bound.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and not node.level and _is_captionkit(node.module):
            if any(_private(part) for part in node.module.split(".")):
                found.append(f"{node.lineno}: from {node.module} import ...")
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                bound.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


def bench_scripts() -> list[Path]:
    return sorted(BENCH.glob("*.py"))


def test_no_bench_script_uses_a_private_captionkit_name():
    found = [f"{path.relative_to(ROOT)}:{use}" for path in bench_scripts()
             for use in private_uses(path.read_text(encoding="utf-8"), str(path))]  # fmt: skip
    assert not found, "private captionkit names in bench/ (make them public or use the " \
        "public API):\n" + "\n".join(found)  # fmt: skip


def test_the_checker_finds_each_planted_private_use():
    source = """
import captionkit.evaluation.evaluate as ev
import captionkit._hidden
from captionkit.evaluation.evaluate import _pin_splits, caption_rows
from captionkit._impl import helper
from captionkit.training import datamodule
from captionkit import Captioner
from other.package import _allowed

ev._member_stores(1)
datamodule._rows_to_tensor(None, [])
Captioner._private_helper()
captionkit.training.datamodule._whole_batch
caption_rows.__name__
local = object()
local._fine
"""
    assert private_uses(source) == [
        "3: import captionkit._hidden",
        "4: from captionkit.evaluation.evaluate import _pin_splits",
        "5: from captionkit._impl import ...",
        "10: ev._member_stores",
        "11: datamodule._rows_to_tensor",
        "12: Captioner._private_helper",
        "13: captionkit.training.datamodule._whole_batch",
    ]


def test_the_checker_reads_the_bench_imports():
    """Guards the checker against reading nothing: bench/ imports many captionkit names."""
    imports = [node for path in bench_scripts()
               for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.ImportFrom) and _is_captionkit(node.module)]  # fmt: skip
    assert len(imports) > 50


def test_bench_scripts_share_code_only_through_common():
    """A script imports no other script: shared helpers live in bench/common.py."""
    scripts = {path.stem for path in bench_scripts()}
    found = []
    for path in bench_scripts():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name in scripts - SHARED_MODULES:
                    found.append(f"{path.name}:{node.lineno} imports {name}")
    assert not found, "\n".join(found)


def test_every_results_file_is_cited_in_benchmarks():
    text = BENCHMARKS.read_text(encoding="utf-8")
    files = [p.relative_to(ROOT).as_posix() for p in RESULTS.rglob("*") if p.is_file()]
    uncited = [f for f in sorted(files) if f not in text]
    assert files, "bench/results/ is empty"
    assert not uncited, "results files BENCHMARKS.md does not cite (delete them: git keeps " \
        "them):\n" + "\n".join(uncited)  # fmt: skip


def test_every_results_file_benchmarks_cites_exists():
    cited = set(CITED.findall(BENCHMARKS.read_text(encoding="utf-8")))
    assert len(cited) > 10, "BENCHMARKS.md cites (almost) no results files: is the pattern right?"
    missing = sorted(c for c in cited - NOT_YET_MEASURED if not (ROOT / c).is_file())
    assert not missing, "BENCHMARKS.md cites results files that are not there:\n" + "\n".join(
        missing
    )


def test_benchmarks_stays_a_user_document():
    lines = BENCHMARKS.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 400, f"BENCHMARKS.md has {len(lines)} lines (at most 400)"
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[0] == "## Summary", "the summary comes first"
    assert not [h for h in lines if h.startswith("#") and re.search(r"\bissue\b", h, re.I)]


def test_quality_variants_are_data():
    """bench/variants/quality.yaml: every variant a description and a list of train options."""
    variants = yaml.safe_load((BENCH / "variants" / "quality.yaml").read_text(encoding="utf-8"))
    assert "best" in variants and variants["best"]["options"] == []
    for name, entry in variants.items():
        assert set(entry) == {"description", "options"}, name
        assert isinstance(entry["description"], str) and entry["description"], name
        assert all(isinstance(option, str) for option in entry["options"]), name
