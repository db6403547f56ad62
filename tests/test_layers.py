"""Imports follow the layer table of docs/architecture.md: a module imports only from lower layers
and from its own package, and the core never imports the CLI."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "nami_core"


def layer_table() -> dict[str, int]:
    """unit -> layer, read from the ```text block under "## Layers" in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Layers", 1)[1]
    block = section.split("```text", 1)[1].split("```", 1)[0]
    table = {}
    for line in block.splitlines():
        match = re.match(r"\s*(\d+)\s+(.+)", line)
        if match:
            for unit in match.group(2).split():
                table[unit] = int(match.group(1))
    return table


def unit_of(module: str) -> str:
    """`nami_core.flow.plan` -> "flow"; `nami_core.files` -> "files"."""
    return module.split(".")[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in `path` (or `source` as if it were that file),
    top-level or inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # `from . import a, b` imports the submodules
                    found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
                    continue
            else:
                target = node.module or ""
            found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def core_files() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if p != CORE / "__init__.py")


def test_every_unit_has_a_layer():
    table = layer_table()
    units = {unit_of(module_name(p)) for p in core_files()}
    assert sorted(units - set(table)) == [], "add these to the layer table of docs/architecture.md"
    assert sorted(set(table) - units) == [], "the layer table lists units that do not exist"


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path):
    table = layer_table()
    here = unit_of(module_name(path))
    for line, target in imports_of(path):
        assert not target.startswith("nami_cli"), f"{path.name}:{line} imports the CLI ({target})"
        if not target.startswith("nami_core.") or unit_of(target) == here:
            continue
        there = unit_of(target)
        assert table[there] < table[here], (
            f"{path.relative_to(ROOT)}:{line} imports {target}: layer {table[there]} ({there}) is not below "
            f"layer {table[here]} ({here})"
        )


def test_the_checker_sees_function_level_and_relative_imports():
    """The checker itself: an upward import inside a function, written relatively, is found."""
    source = "def f():\n    from ..eval.geneval import x\n    from . import shapes\n"
    found = imports_of(CORE / "data" / "store.py", source)
    assert found == [(2, "nami_core.eval.geneval"), (3, "nami_core.data.shapes")]
    assert layer_table()["eval"] > layer_table()["data"]  # so the checker would reject the first
