"""``prepare_splits``: config -> train/validation/test datasets + report (+ conversations for generation eval)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import cache
from .config import DataConfig
from .dataset import EncodedDataset
from .errors import DataError, DataProblems
from .messages import Conversation
from .process import load_conversations, merge_processed, process_source
from .registry import Source, registry_sources, split_holdout
from .report import DataReport

SPLITS = ("train", "validation", "test")


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def split_sources(cfg: DataConfig, base_dir: str | Path | None = None) -> dict[str, list[Source]]:
    """Files of each split, resolved against ``data_dir`` (itself relative to ``base_dir``)."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    root = base
    if cfg.data_dir and Path(cfg.data_dir).expanduser().resolve() != base.expanduser().resolve():
        # (a caller may pass data_dir itself as base_dir; it must not be joined twice)
        root = _resolve(cfg.data_dir, base)
    train = [Source(_resolve(f, root)) for f in ([cfg.train_file] if cfg.train_file else []) + cfg.train_files]
    if cfg.datasets:
        train += registry_sources(cfg.registry_file, cfg.datasets, root)
    train, held_out = split_holdout(train, cfg.val_size, cfg.max_samples)
    out = {"train": train,
           "validation": [Source(_resolve(cfg.val_file, root))] if cfg.val_file else held_out,
           "test": [Source(_resolve(cfg.test_file, root))] if cfg.test_file else []}
    return out


def conversations(sources: list[Source], cfg: DataConfig) -> list[Conversation]:
    """Valid conversations of ``sources`` (invalid records are skipped; use ``prepare_splits`` to validate).

    Read by the same loader as the encoded splits, so the records are the
    ones ``prepare_splits`` kept (with ``skip_invalid``, the valid ones).
    """
    return [conv for source in sources for conv in load_conversations(source, cfg)[0]]


@dataclass
class Splits:
    """Encoded splits ready for a Trainer, plus their report."""

    train: EncodedDataset | None
    validation: EncodedDataset | None
    test: EncodedDataset | None
    report: DataReport
    cfg: DataConfig
    tokenizer: object
    sources: dict[str, list[Source]] = field(default_factory=dict)

    def __getitem__(self, split: str) -> EncodedDataset | None:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        return getattr(self, split)

    def conversations(self, split: str = "validation") -> list[Conversation]:
        """The split's valid conversations (re-read from the files; for generation-based evaluation)."""
        self[split]
        return conversations(self.sources.get(split, []), self.cfg)


def prepare_splits(cfg: DataConfig, tokenizer, *, base_dir: str | Path | None = None) -> Splits:
    """Read, validate, encode (or load from cache) every configured split.

    Raises :class:`DataError` listing every invalid record unless
    ``cfg.skip_invalid``; then the report says how many were skipped and why.
    """
    if not cfg.has_train() and not (cfg.val_file or cfg.test_file):
        raise DataError("no data configured (expected data.train_file, data.datasets, or val/test files; "
                        "fix: set data.train_file=path/to/train.jsonl)")
    sources = split_sources(cfg, base_dir)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache.default_cache_dir()
    report, datasets, problems = DataReport(batching=cfg.batching_note()), {}, DataProblems()
    for split in SPLITS:
        if not sources[split]:
            datasets[split] = None
            continue
        key = cache.cache_key(sources[split], cfg, tokenizer) if cfg.cache else None
        hit = cache.load(cache_dir, key) if key else None
        if hit is not None:
            datasets[split], report.splits[split] = hit
            report.from_cache[split] = True
            continue
        result = merge_processed([process_source(s, cfg, tokenizer) for s in sources[split]])
        for p in result.problems:
            problems.add(p)
        datasets[split], report.splits[split] = result.dataset, result.report
        report.from_cache[split] = False
        if key and (cfg.skip_invalid or not result.problems):
            cache.save(cache_dir, key, result.dataset, result.report)
    if not cfg.skip_invalid:
        problems.raise_if_any("the data")
    if datasets["train"] is not None and len(datasets["train"]) == 0 and cfg.has_train():
        raise DataError("the training set is empty after validation and length limits "
                        f"(report:\n{report.format()})")
    return Splits(datasets["train"], datasets["validation"], datasets["test"], report, cfg, tokenizer, sources)


__all__ = ["Splits", "prepare_splits", "split_sources", "conversations"]
