"""The modules of `diffusers_dito` import one another without a cycle.

The graph is read from the source with `ast`, so that every import counts, wherever it is written: at the top of a
module, inside a function (an import deferred to run time is still a dependency), and under `if TYPE_CHECKING:`
(a dependency of the types). Its nodes are the modules of the package, a package being its `__init__.py`:

- `import diffusers_dito.a.b` and `from diffusers_dito.a import b` (or `from .a import b`, `from . import a`)
  are edges to the module `diffusers_dito.a.b` when it exists, and otherwise, `b` being a name defined in
  `diffusers_dito.a`, to `diffusers_dito.a`;
- the packages that contain the imported module are not edges. Python runs their `__init__.py` first, but
  counting them would close a cycle through `diffusers_dito/__init__.py`, which imports its submodules, from every
  module that imports a sibling by its absolute name. A package's `__init__.py` that imports its submodules is an
  edge from the package to each of them.

Imports of other distributions (torch, diffusers, ...) are not part of the graph. Every module under
`src/diffusers_dito` is read, subpackages added later included.
"""

import ast
import graphlib
import importlib.util
from pathlib import Path

import pytest

PACKAGE = "diffusers_dito"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package at `root`, by dotted name (a package under its own name)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules) -> set[str]:
    """The modules of `modules` that one import statement of `module` names."""
    if isinstance(node, ast.Import):
        targets = {alias.name for alias in node.names}
    else:
        base = node.module
        if node.level:  # relative: `from .` is the module's own package
            anchor = module if is_package else module.rpartition(".")[0]
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), anchor)
        targets = {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    found = set()
    for target in targets:
        while target and target not in modules:  # `import a.b.name`: the longest prefix that is a module
            target = target.rpartition(".")[0]
        if target:
            found.add(target)
    return found


def import_graph(root: Path = SOURCE, package: str = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports, from every import statement anywhere in its source."""
    modules = module_names(root, package)
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
        is_package = path.name == "__init__.py"
        graph[module] = set().union(*(imported_modules(n, module, is_package, modules) for n in nodes)) - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, as `[a, b, ..., a]` (a imports b ...), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        return list(reversed(err.args[1]))  # graphlib lists the cycle against the direction of the edges
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert f"{PACKAGE}.models.autoencoder_dito" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.fixture
def toy_package(tmp_path):
    """A package with each kind of import that the graph must see: deferred, typing-only, relative, of a module."""
    files = {
        "__init__.py": "from .a import A\n",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.c import C\nA = 1\n",
        "b.py": "def load():\n    import toy.a\n    from toy import sub\n",
        "sub/__init__.py": "",
        "sub/c.py": "from ..a import A\nC = A\n",
        "d.py": "from . import A, b\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_import_graph_counts_deferred_typing_and_relative_imports(toy_package):
    graph = import_graph(toy_package, "toy")
    assert graph == {
        "toy": {"toy.a"},
        "toy.a": {"toy.sub.c"},
        "toy.b": {"toy.a", "toy.sub"},
        "toy.d": {"toy", "toy.b"},
        "toy.sub": set(),
        "toy.sub.c": {"toy.a"},
    }
    cycle = find_cycle(graph)
    assert cycle in (["toy.a", "toy.sub.c", "toy.a"], ["toy.sub.c", "toy.a", "toy.sub.c"])
    assert find_cycle({**graph, "toy.sub.c": set()}) is None
