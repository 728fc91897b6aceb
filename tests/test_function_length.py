"""No function is longer than 60 lines, counted from its `def` line to its last line, docstring included.

A script's `main` and `parse_args` and a pipeline's `__call__` read top to bottom, as in diffusers' examples and
pipelines, and are not counted. The package (`src/diffusers_dito`, but for its `training` subpackage) and the
training code (`training/` and `src/diffusers_dito/training/`) are checked separately.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "diffusers_dito"
MAX_LINES = 60
EXEMPT = ("main", "__call__", "parse_args")
PARTS = {  # part -> (folders read, folders left out)
    "package": ([PACKAGE], [PACKAGE / "training"]),
    "training": ([ROOT / "training", PACKAGE / "training"], []),
}


def long_functions(folders: list[Path], excluded: list[Path]) -> list[str]:
    """`path:line name (n lines)` for every function or method over `MAX_LINES` lines in the folders' modules."""
    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            if any(path.is_relative_to(other) for other in excluded):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.name in EXEMPT:
                    continue
                length = node.end_lineno - node.lineno + 1
                if length > MAX_LINES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


@pytest.mark.parametrize("part", list(PARTS))
def test_no_function_is_over_60_lines(part):
    folders, excluded = PARTS[part]
    assert any(folder.is_dir() for folder in folders)
    assert long_functions(folders, excluded) == []
