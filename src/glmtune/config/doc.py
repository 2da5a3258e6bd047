"""The config documents itself: every option with its type, default and help (``glmtune train --help-config``).

Help comes from each field's ``metadata["help"]`` (the trl ``sft_config.py``
pattern); sections defined by other packages that document a field with an
attribute docstring (``name: int = 1`` then ``\"\"\"help\"\"\"``) are read from
their source, so every section prints the same way.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing

from .schema import TrainConfig


def field_help(cls: type, name: str) -> str:
    """The help text of field ``name`` of dataclass ``cls`` ("" when it has none)."""
    for f in dataclasses.fields(cls):
        if f.name == name and f.metadata.get("help"):
            return " ".join(str(f.metadata["help"]).split())
    return _attribute_docs(cls).get(name, "")


@functools.lru_cache(maxsize=None)
def _attribute_docs(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def describe_config(root: type = TrainConfig, width: int = 100) -> str:
    """Every option of ``root`` as text: one section per dataclass, ``key (type, default): help`` per field."""
    lines: list[str] = []
    _describe(root, "", lines, width)
    return "\n".join(lines) + "\n"


def _describe(cls: type, prefix: str, lines: list[str], width: int) -> None:
    hints = typing.get_type_hints(cls)
    nested = []
    if prefix:
        lines.append(f"{prefix}:  {(cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''}".rstrip())
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(tp):
            nested.append((tp, key))
            continue
        written = f.type if isinstance(f.type, str) else getattr(tp, "__name__", str(tp))
        head = f"  {key} ({written.replace('typing.', '')}, default {_default(f)})"
        text = field_help(cls, f.name)
        lines.append(head)
        if text:
            lines.extend(textwrap.wrap(text, width, initial_indent="      ", subsequent_indent="      "))
    for tp, key in nested:
        if lines:
            lines.append("")
        _describe(tp, key, lines, width)
