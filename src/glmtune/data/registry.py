"""Dataset registry: a JSON/YAML file naming datasets (name -> file, format, columns, ratio).

Entries in LLaMA-Factory's ``dataset_info.json`` shape (``file_name``,
``formatting``, ``columns`` role -> column, ``tags``) are read too, through
:mod:`glmtune.data.dataset_info`. Without a registry file, names are looked up in
``DATA_DIR/dataset_info.json`` (as LLaMA-Factory's ``dataset_dir``), then in the
registry of common public datasets bundled with glmtune, whose files resolve
against the data folder (download the file, drop it there).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from .dataset_info import bundled_registry, entry_source, is_dataset_info_entry
from .errors import DataError

REGISTRY_DEFAULT = "dataset_info.json"
BUNDLED = "bundled"


@dataclass
class Source:
    """One data file of a split, with how to read it."""

    path: Path
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    ratio: float = 1.0
    """Fraction of records to use; above 1 repeats records (oversampling)."""
    name: str = ""
    max_samples: int | None = None
    """Keep at most this many records (the first ones, after ratio sampling), as LLaMA-Factory's max_samples."""
    holdout: float | int | None = None
    """Validation share held out of this source (``data.val_size``): a fraction, or a record count."""
    part: str = "all"
    """Which records of the holdout split this source reads: all, train or validation."""


def _load_registry(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: dataset registry not found (fix: check data.registry_file)")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
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


def find_registry(registry_file: str | Path | None, base_dir: Path) -> tuple[Path, Path]:
    """(registry path, folder its files resolve against): the given file, DATA_DIR/dataset_info.json, or bundled."""
    if registry_file == BUNDLED:
        return bundled_registry(), base_dir
    if registry_file:
        reg_path = Path(registry_file)
        reg_path = reg_path if reg_path.is_absolute() else base_dir / reg_path
        return reg_path, reg_path.parent
    local = base_dir / REGISTRY_DEFAULT
    return (local, base_dir) if local.is_file() else (bundled_registry(), base_dir)


def default_registry(data_dir: str | Path) -> str:
    """The registry ``--dataset NAME`` reads: DATA_DIR/dataset_info.json (LLaMA-Factory's place), else bundled."""
    local = Path(data_dir) / REGISTRY_DEFAULT
    return str(local.absolute()) if local.is_file() else BUNDLED


def registry_sources(registry_file: str | Path | None, names: list[str], base_dir: Path) -> list[Source]:
    """Sources for ``names`` (``name`` or ``name:ratio``) from the registry (see :func:`find_registry`)."""
    reg_path, files_dir = find_registry(registry_file, base_dir)
    registry = _load_registry(reg_path)
    sources = []
    for spec in names:
        name, ratio = _parse_name(spec)
        entry = registry.get(name)
        if entry is None:
            raise DataError(f"{reg_path}: unknown dataset {name!r}; known: {', '.join(sorted(registry)) or 'none'}")
        if is_dataset_info_entry(entry):
            file, fmt, columns = entry_source(name, entry, str(reg_path), files_dir)
        elif not isinstance(entry, dict) or not entry.get("file"):
            raise DataError(f"{reg_path}: dataset {name!r} has no 'file' (expected {{file, format, columns, ratio}}, "
                            "or LLaMA-Factory's {file_name, formatting, columns, tags})")
        else:
            file, fmt, columns = Path(entry["file"]), entry.get("format", "auto"), dict(entry.get("columns") or {})
        ratio = ratio if ratio is not None else float(entry.get("ratio", 1.0))
        if ratio <= 0:
            raise DataError(f"{reg_path}: dataset {name!r} ratio {ratio} (expected a positive number)")
        path = file if file.is_absolute() else files_dir / file
        if not path.exists():
            raise DataError(f"{reg_path}: dataset {name!r}: its file {path} does not exist "
                            f"(fix: {_missing_fix(reg_path, files_dir, entry)})")
        sources.append(Source(path, fmt, columns, ratio, name))
    return sources


def _missing_fix(reg_path: Path, files_dir: Path, entry: dict) -> str:
    if reg_path == bundled_registry():
        hub = f" (Hugging Face: {entry['hf_hub_url']})" if entry.get("hf_hub_url") else ""
        return (f"this is a public dataset glmtune knows by name but does not ship{hub}: glmtune cannot download it; "
                f"download it yourself and place the file in {files_dir} (the data folder: data.data_dir, or "
                "dataset_dir in a LLaMA-Factory config)")
    return "correct the dataset's file entry; relative paths resolve against the registry's folder"


def select_records(records: list, source: Source, seed: int) -> list:
    """The records ``source`` reads: the first ``max_samples``, then its part of the ``holdout`` split.

    The split is a seeded random choice of rows (the same on every run with the
    same seed, file and name), made before ratio sampling so a validation row
    is never also a training row, however the training part is oversampled.
    """
    if source.max_samples is not None:
        records = records[:source.max_samples]
    if source.holdout is None or source.part == "all":
        return records
    n = len(records)
    k = holdout_count(source.holdout, n)
    if not 0 < k < n:
        raise DataError(f"{source.path}: val_size {source.holdout!r} holds out {k} of {n} records, leaving "
                        f"{'no training' if k >= n else 'no validation'} records (fix: choose a val_size between "
                        f"0 and 1, or a count below {n})")
    held = set(random.Random(f"{seed}:val_size:{source.name}:{source.path}").sample(range(n), k))
    keep_held = source.part == "validation"
    return [r for i, r in enumerate(records) if (i in held) == keep_held]


def holdout_count(val_size: float | int, n: int) -> int:
    """Rows held out of ``n``: a fraction rounds up (as ``datasets.train_test_split``), a count is itself."""
    if isinstance(val_size, float) and val_size < 1:
        return math.ceil(val_size * n)
    return int(val_size)


def split_holdout(train: list[Source], val_size: float | int | None,
                  max_samples: int | None) -> tuple[list[Source], list[Source]]:
    """(training sources, validation sources) with ``max_samples`` and the ``val_size`` holdout applied."""
    train = [replace(s, max_samples=max_samples) for s in train]
    if val_size is None:
        return train, []
    if isinstance(val_size, int) and len(train) > 1:
        raise DataError(f"data.val_size {val_size}: a record count needs a single training file or dataset, and "
                        f"there are {len(train)} (fix: give a fraction such as 0.1, held out of each)")
    return ([replace(s, holdout=val_size, part="train") for s in train],
            [replace(s, holdout=val_size, part="validation", ratio=1.0) for s in train])
