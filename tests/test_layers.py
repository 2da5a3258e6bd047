"""Layers import one way: every import in src/glmtune, read with ``ast``, points down (or sideways).

The layer order is written once, in LAYERS. Function-local imports count like module-level ones
(deferring torch is no reason to reach upwards), and so do imports under ``if TYPE_CHECKING``.
Imports by computed name (``importlib.import_module``) are not seen: keep those to the packages' lazy
exports (``glmtune.lazy``), whose tables name only the package's own submodules.
Two rules, with no exceptions:

- no module imports a module of a higher layer;
- no import cycle between modules (even within one layer).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "glmtune"

# Top to bottom; a module may import its own layer and the layers below it. The key is the first
# name under glmtune ("glmtune" itself is the package's __init__: the public facade, like api).
LAYERS: list[set[str]] = [
    {"cli", "__main__", "commands"},  # the command line
    {"webui", "quickstart"},  # apps over the library (train, infer, export), never the command line
    {"train", "infer", "export", "export_folder", "serving"},
    {"api", "glmtune"},  # the facade: load_model(path, adapter=, prefix=), load_tokenizer
    {"methods", "config"},
    {"families", "models", "tokenizer", "tokenizers", "hf_tokenizer", "data"},
    {"errors", "files", "devices", "metrics", "resources", "version", "lazy"},  # small leaves that import nothing above
]


def layer_of(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else parts[0]
    for rank, names in enumerate(LAYERS):
        if key in names:
            return rank
    raise AssertionError(f"{module}: not in any layer; add {key!r} to LAYERS in {Path(__file__).name}")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(name: str) -> str | None:
    """The glmtune module ``name`` refers to (a submodule, else the package holding the attribute)."""
    parts = name.split(".")
    while parts:
        base = SRC.joinpath(*parts)
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return ".".join(parts)
        parts = parts[:-1]
    return None


def imports_in(source: str, here: str, is_package: bool = False) -> set[str]:
    """Every glmtune module the code of module ``here`` imports, anywhere in it (functions included)."""
    package = here if is_package else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            # "from pkg import sub" imports the submodule pkg.sub when there is one, else pkg itself.
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = resolve(name) if name.split(".")[0] == "glmtune" else None
            if target and target != here:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_in(p.read_text(encoding="utf-8"), module_name(p), p.name == "__init__.py")
            for p in sorted(PACKAGE.rglob("*.py"))}


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    # A lower rank is a higher layer.
    return {(a, b) for a, targets in graph.items() for b in targets if layer_of(b) < layer_of(a)}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)


def test_no_import_from_a_higher_layer():
    found = sorted(upward_imports(import_graph()))
    assert not found, "imports from a higher layer (see LAYERS):\n" + "\n".join(f"  {a} -> {b}" for a, b in found)


def test_no_import_cycles():
    found = [sorted(c) for c in cycles(import_graph())]
    assert not found, "import cycles:\n" + "\n".join(f"  {c}" for c in found)


def test_the_checker_sees_function_local_and_relative_imports():
    """The scanner itself, on made-up code: every form of import is found and resolved to a module."""
    source = (
        "import torch\n"
        "from .loading import load_model\n"  # sibling module
        "from .. import methods\n"  # a subpackage, named from its parent
        "from .. import __version__\n"  # an attribute of the package: the package itself
        "def f():\n"
        "    from ..methods.registry import prepare\n"  # function-local
        "    import glmtune.cli\n"
    )
    assert imports_in(source, "glmtune.models.convert") == {
        "glmtune.models.loading", "glmtune.methods", "glmtune", "glmtune.methods.registry", "glmtune.cli"}
    assert imports_in("from . import loading\n", "glmtune.models", is_package=True) == {"glmtune.models.loading"}
    assert upward_imports({"glmtune.models.convert": {"glmtune.methods", "glmtune.errors"}}) == {
        ("glmtune.models.convert", "glmtune.methods")}
    assert cycles({"glmtune.a": {"glmtune.b"}, "glmtune.b": {"glmtune.a"}, "glmtune.c": set()}) == [
        {"glmtune.a", "glmtune.b"}]


def test_version_is_a_leaf_that_matches_pyproject():
    """glmtune.version imports nothing of glmtune, and says the same version as pyproject.toml."""
    import glmtune
    from glmtune.version import __version__

    version_file = PACKAGE / "version.py"
    assert imports_in(version_file.read_text(encoding="utf-8"), "glmtune.version") == set()
    pyproject = (SRC.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1) == __version__ == glmtune.__version__


def uncommented_local_imports(source: str) -> list[int]:
    """Lines of function-local imports with no comment saying why they are deferred.

    An import is explained by a comment on its own line(s) or on the line directly above; an import
    right below an explained one shares that explanation (a block under one comment).
    """
    lines = source.splitlines()
    local = sorted((node for func in ast.walk(ast.parse(source))
                    if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for node in ast.walk(func) if isinstance(node, (ast.Import, ast.ImportFrom))),
                   key=lambda node: node.lineno)
    explained: set[int] = set()  # end lines of explained imports
    missing = []
    for node in dict.fromkeys(local):  # nested functions are walked twice
        above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
        if ("#" in "".join(lines[node.lineno - 1:node.end_lineno]) or above.startswith("#")
                or node.lineno - 1 in explained):
            explained.add(node.end_lineno)
        else:
            missing.append(node.lineno)
    return missing


def test_every_function_local_import_says_why():
    """Issue 10: a function-local import only defers a heavy dependency, and a comment says which."""
    found = [f"{path.relative_to(SRC)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
             for line in uncommented_local_imports(path.read_text(encoding="utf-8"))]
    assert not found, "function-local imports without a comment saying why:\n" + "\n".join(f"  {f}" for f in found)


def test_the_comment_checker_sees_uncommented_local_imports():
    source = (
        "import json\n"
        "def f():\n"
        "    # deferred: imports torch\n"
        "    import torch\n"
        "    import transformers\n"  # same block as the explained one above
        "\n"
        "    import peft\n"  # separated: needs its own comment
        "    from safetensors import torch as st  # deferred: heavy\n"
        "def g():\n"
        "    from pathlib import Path\n"
    )
    assert uncommented_local_imports(source) == [7, 10]
