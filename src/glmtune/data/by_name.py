"""Datasets by name (``--dataset a,b:0.5``), as LLaMA-Factory's ``--dataset`` with its ``--dataset_dir``.

One rule for ``glmtune train``, ``data check``, ``eval`` and the web UI: names
come from ``--registry``, else ``DATASET_DIR/dataset_info.json`` (LLaMA-Factory's
place), else glmtune's bundled registry of public datasets; their files are
looked for in the dataset folder. A relative ``--registry`` is looked for in the
dataset folder first (where LLaMA-Factory keeps its registry), then in the
working directory.
"""

from __future__ import annotations

from pathlib import Path

from .dataset_info import is_dataset_info_entry
from .errors import DataError
from .process import load_conversations
from .registry import BUNDLED, Source, _load_registry, default_registry, find_registry, registry_sources

DEFAULT_DATASET_DIR = "data"  # LLaMA-Factory's dataset_dir default


def split_names(text: str | list[str] | None) -> list[str]:
    """``"a, b:0.5"`` (or a list, as a multi-select gives) -> ``["a", "b:0.5"]``."""
    items = text if isinstance(text, list) else str(text or "").split(",")
    return [s.strip() for s in items if s and s.strip()]


def registry_path(registry: str | None, dataset_dir: str | Path) -> str:
    """The registry ``--dataset`` names are read from: absolute path, or ``bundled``."""
    folder = Path(dataset_dir).expanduser()
    if not registry:
        return default_registry(folder)
    if registry == BUNDLED:
        return BUNDLED
    given = Path(registry).expanduser()
    candidates = [given] if given.is_absolute() else [folder / given, Path.cwd() / given]
    for path in candidates:
        if path.is_file():
            return str(path.absolute())
    raise DataError(f"--registry {registry}: not found (looked for {' and '.join(map(str, candidates))}); give a "
                    "dataset_info.json or glmtune registry file, a relative path being looked for in the dataset "
                    "folder first, then in the working directory")


def named_sources(names: str | list[str] | None, dataset_dir: str | Path | None = None,
                  registry: str | None = None) -> list[Source]:
    """Sources of ``names`` (``name`` or ``name:ratio``) by the rule above; empty for no names."""
    chosen = split_names(names)
    if not chosen:
        return []
    folder = Path(dataset_dir or DEFAULT_DATASET_DIR).expanduser()
    return registry_sources(registry_path(registry, folder), chosen, folder)


def dataset_names(dataset_dir: str | Path | None = None, registry: str | None = None) -> list[str]:
    """Names a dataset picker offers: every supervised (non-ranking) entry of the registry the rule finds."""
    folder = Path(dataset_dir or DEFAULT_DATASET_DIR).expanduser()
    try:
        reg_path, _ = find_registry(registry_path(registry, folder), folder)
        entries = _load_registry(reg_path)
    except DataError:
        return []  # a picker shows nothing; choosing a name reports the problem
    return [name for name, entry in entries.items()
            if isinstance(entry, dict) and not (is_dataset_info_entry(entry) and entry.get("ranking"))]


def all_conversations(sources: list[Source], cfg) -> list:
    """Conversations of every source, for evaluation: an invalid record or an empty file is an error naming it."""
    conversations = []
    for source in sources:
        found, problems = load_conversations(source, cfg)
        if problems:
            raise DataError(f"{len(problems)} invalid record(s) in {source.path}; first: {problems[0]}. "
                            "Run `glmtune data check` on the file for the full list")
        if not found:
            raise DataError(f"{source.path}: no records to evaluate")
        conversations += found
    return conversations
