"""Build typed dataclass trees from plain dicts: type checks, closest-name hints, dotted overrides.

Works on any dataclass (ours or another package's, such as ``glmtune.data.DataConfig``),
driven only by the field type hints, so every section is checked the same way.
Errors name the source (file and line when known), the dotted key, what was
expected and what to do.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..errors import GlmtuneError, closest  # noqa: F401  (closest: one hint for every checker)


class ConfigError(GlmtuneError, ValueError):
    """The configuration is invalid; the message says where and how to fix it.

    ``key`` (a dotted option such as ``training.learning_rate``, when one option
    is to blame) lets :func:`build` point at where that option was given: the
    file line, or the command-line override.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


@dataclasses.dataclass
class Source:
    """Where values came from, to point errors at a file line or a command-line override."""

    name: str = "<config>"
    lines: dict[str, int] = dataclasses.field(default_factory=dict)
    overridden: set[str] = dataclasses.field(default_factory=set)

    def alias(self, path: str, written_as: str) -> None:
        """``path`` was written in the file as ``written_as`` (an official-format key): errors use its line."""
        if written_as in self.lines:
            self.lines[path] = self.lines[written_as]

    def where(self, path: str) -> str:
        if path in self.overridden:
            return f"command-line override {path}"
        line = self.lines.get(path)
        return f"{self.name}, line {line}" if line else self.name


def read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    """(data, {dotted.key: line}) of a YAML mapping file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, data:, method:, ...) at the top level")
    lines: dict[str, int] = {}
    _collect_lines(node, "", lines)
    return data, lines


def _collect_lines(node, prefix: str, lines: dict[str, int]) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        path = f"{prefix}{key_node.value}"
        lines[path] = key_node.start_mark.line + 1
        _collect_lines(value_node, path + ".", lines)


def apply_overrides(data: dict, overrides: list[str], source: Source) -> dict:
    """Apply ``a.b=value`` strings (value parsed as YAML) onto a nested dict copy."""
    data = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected dotted.key=value, e.g. training.learning_rate=1e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
        source.overridden.add(key)
    return data


def _deep_copy(data):
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def unknown_key(where: str | None, key_path: str, known: list[str], what: str = "option",
                see: str = "") -> ConfigError:
    """The one unknown-key error: where, the key, the closest known name, and the valid names (or ``see``)."""
    key = key_path.rsplit(".", 1)[-1]
    prefix = f"{where}: " if where else ""
    if see:
        return ConfigError(f"{prefix}{key_path} is not a {what}; {closest(key, known)}see {see}", key=key_path)
    return ConfigError(f"{prefix}unknown {what} {key_path!r}; {closest(key, known)}"
                       f"valid {what}s: {', '.join(known) if known else '(none)'}", key=key_path)


def build(cls: type, data: Any, path: str, source: Source):
    """An instance of dataclass ``cls`` from ``data``; every key and type checked."""
    where = source.where(path) if path else source.name
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {path or 'config'} must be a mapping of options, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise unknown_key(source.where(key_path), key_path, fields)
        kwargs[key] = convert(hints[key], value, key_path, source)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        key = exc.key or _blamed_key(str(exc), path, list(kwargs))
        raise ConfigError(f"{source.where(key) if key else where}: {exc}", key=key) from None
    except (TypeError, ValueError) as exc:
        key = _blamed_key(str(exc), path, list(kwargs))
        raise ConfigError(f"{source.where(key) if key else where}: invalid {path or 'config'}: {exc}",
                          key=key) from None


def _blamed_key(message: str, path: str, given: list[str]) -> str | None:
    """The given option a section's own check names (``lora.r`` / ``training.seed``), to blame its source."""
    for key in sorted(given, key=len, reverse=True):
        if re.search(rf"(?<![\w]){re.escape(str(key))}(?![\w])", message):
            return f"{path}.{key}" if path else str(key)
    return None


def convert(tp, value, path: str, source: Source):
    """``value`` checked (and losslessly coerced) against the type hint ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert(arg, value, path, source)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[-1] if len(errors) == 1 else _type_error(tp, value, path, source)
    if origin is Literal:
        if isinstance(value, bool) and not value and "no" in args:
            return "no"  # YAML 1.1 reads a bare `no` as false
        if value in args and not isinstance(value, bool):
            return value
        hint = closest(str(value), [str(a) for a in args])
        raise ConfigError(
            f"{source.where(path)}: {path} = {_show(value)} is not allowed; {hint}choose one of "
            + ", ".join(repr(a) for a in args)
        )
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path, source)
    if origin in (list, tuple):
        if isinstance(value, str) and args and _accepts_str(args[0]):
            value = [value]  # a single name where a list is expected is a one-item list
        if not isinstance(value, (list, tuple)):
            raise _type_error(tp, value, path, source)
        items = [convert(args[0] if args else Any, v, f"{path}[{i}]", source) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(tp, value, path, source)
        return {str(k): convert(args[1] if args else Any, v, f"{path}.{k}", source) for k, v in value.items()}
    return _scalar(tp, value, path, source)


def _accepts_str(tp) -> bool:
    return tp is str or str in typing.get_args(tp)


def _scalar(tp, value, path: str, source: Source):
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        number = _float(value)
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{source.where(path)}: {path} must be a finite number, got {_show(value)}",
                                  key=path)
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a folder named 2024 or a resume step
    elif isinstance(value, tp):
        return value
    raise _type_error(tp, value, path, source)


def _float(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        # PyYAML reads 3e-4 (no dot) as a string; the official configs write it that way.
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _type_error(tp, value, path: str, source: Source) -> ConfigError:
    return ConfigError(f"{source.where(path)}: {path} must be {_type_name(tp)}, got {_show(value)}", key=path)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + (
            " (or null)" if type(None) in args else ""
        )
    if origin in (list, tuple):
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _show(value) -> str:
    text = repr(value)
    return (text[:60] + "...") if len(text) > 60 else text


def to_dict(obj) -> Any:
    """Plain dict/list/scalar form of a dataclass tree (for writing the resolved config)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
