"""Dataset registry: a JSON/YAML file naming datasets (name -> file, format, columns, ratio)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError


@dataclass
class Source:
    """One data file of a split, with how to read it."""

    path: Path
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    ratio: float = 1.0
    """Fraction of records to use; above 1 repeats records (oversampling)."""
    name: str = ""


def _load_registry(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: dataset registry not found (fix: check data.registry_file)")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml and json raise different types; both mean "unreadable"
        raise DataError(f"{path}: cannot parse the registry ({exc}) "
                        "(expected a mapping name -> {file, format, columns, ratio})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: the registry is a {type(data).__name__} "
                        "(expected a mapping name -> {file, format, columns, ratio})")
    return data


def _parse_name(spec: str) -> tuple[str, float | None]:
    name, _, ratio = spec.partition(":")
    if not ratio:
        return name.strip(), None
    try:
        return name.strip(), float(ratio)
    except ValueError:
        raise DataError(f"data.datasets: {spec!r} has a ratio that is not a number (expected name or name:0.5)") \
            from None


def registry_sources(registry_file: str | Path, names: list[str], base_dir: Path) -> list[Source]:
    """Sources for ``names`` (``name`` or ``name:ratio``) from the registry file."""
    reg_path = Path(registry_file)
    reg_path = reg_path if reg_path.is_absolute() else base_dir / reg_path
    registry = _load_registry(reg_path)
    sources = []
    for spec in names:
        name, ratio = _parse_name(spec)
        entry = registry.get(name)
        if entry is None:
            raise DataError(f"{reg_path}: unknown dataset {name!r}; known: {', '.join(sorted(registry)) or 'none'}")
        if not isinstance(entry, dict) or not (entry.get("file") or entry.get("file_name")):
            raise DataError(f"{reg_path}: dataset {name!r} has no 'file' (expected {{file, format, columns, ratio}})")
        file = Path(entry.get("file") or entry["file_name"])
        fmt = entry.get("format", entry.get("formatting", "auto"))
        ratio = ratio if ratio is not None else float(entry.get("ratio", 1.0))
        if ratio <= 0:
            raise DataError(f"{reg_path}: dataset {name!r} ratio {ratio} (expected a positive number)")
        path = file if file.is_absolute() else reg_path.parent / file
        if not path.exists():
            raise DataError(f"{reg_path}: dataset {name!r}: its file {path} does not exist "
                            "(fix: correct the dataset's 'file' entry; relative paths resolve against the registry's "
                            "folder)")
        sources.append(Source(path, fmt, dict(entry.get("columns") or {}), ratio, name))
    return sources
