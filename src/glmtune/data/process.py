"""One data file -> encoded samples + report + problems, in parallel for large files.

Also the one loader of conversations (:func:`load_conversations`): training's
encoding here, generation evaluation, ``glmtune data`` and ``glmtune eval``
all read records with :func:`read_source`, pick the format with
:func:`source_format` and convert with ``convert_record``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DataConfig
from .convert import convert_record, resolve_format
from .dataset import EncodedDataset
from .encode import encode_sample
from .errors import DataError, Problem, RecordError
from .family_format import family_notes
from .messages import Conversation
from .readers import RECORDS_EXPECTED, RawJSON, parse_raw, raw_json_lines, read_records
from .registry import Source, select_records
from .report import SplitReport

PARALLEL_MIN_RECORDS = 20_000
_JOB: tuple | None = None  # set before forking workers so records are shared copy-on-write, not pickled


@dataclass
class Processed:
    """Result of processing records: samples, their stats, and every problem found."""

    dataset: EncodedDataset
    report: SplitReport
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    """Records used but worth a look (duplicate keys, differences from the official demo, length drops)."""
    full_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class Read:
    """What :func:`read_source` read: records, unreadable ones, warnings, and how many records there were."""

    records: list[tuple[int, object]]
    problems: list[Problem]
    warnings: list[Problem]
    count: int


def read_source(source: Source, seed: int = 0, raw: bool = False) -> Read:
    """Records of a source (sampled by its ratio), the reading problems and warnings, and the records read.

    With ``raw=True`` JSON-lines records may come back unparsed (:class:`RawJSON`) for the workers to parse.
    """
    records, problems, warnings = [], [], []
    lines = raw_json_lines(source.path) if raw else None
    if lines is not None:
        records = lines
    else:
        for item in read_records(source.path):
            if not isinstance(item, Problem):
                records.append(item)
            else:
                (warnings if item.warning else problems).append(item)
    read = len(records) + len(problems)
    if read == 0:
        # An empty file is almost always a wrong path or a failed export; training on
        # nothing, or "all records are valid", would hide that.
        raise DataError(f"{source.path}: the file holds no records (expected {RECORDS_EXPECTED}; fix: check the path, "
                        "or regenerate the file)")
    records = select_records(records, source, seed)
    if source.part == "validation":  # the training part of the same file reports what could not be read
        problems, warnings = [], []
    if source.ratio != 1.0 and records and source.part != "validation":
        rng = random.Random(f"{seed}:{source.name}:{source.path}")
        whole, frac = int(source.ratio), source.ratio - int(source.ratio)
        picked = list(range(len(records))) * whole + rng.sample(range(len(records)), round(frac * len(records)))
        records = [records[i] for i in sorted(picked)]
    return Read(records, problems, warnings, read)


def source_format(source: Source, cfg: DataConfig, records: list) -> str:
    """The format of a source's records: configured, or detected from its first object record."""
    file, columns = str(source.path), {**cfg.columns, **source.columns}
    fmt_cfg = cfg.format if source.format == "auto" else source.format
    first = _first_record(records, file)
    if isinstance(first[1], dict) or fmt_cfg != "auto":
        return resolve_format(fmt_cfg, first[1], file, first[0], columns)
    return "chatglm3"  # nothing readable to detect from: every record is reported as not an object


def load_conversations(source: Source | str | Path, cfg: DataConfig, *,
                       prompt: bool = False) -> tuple[list[Conversation], list[Problem]]:
    """The one loader of conversations: valid ones of ``source`` and the problems of the others.

    Nothing is raised per record. ``prompt=True`` reads records as generation
    prompts (no training checks; see ``convert_record``).
    """
    source = source if isinstance(source, Source) else Source(Path(source))
    read = read_source(source, cfg.seed)
    problems = list(read.problems)
    if not read.records:
        return [], problems
    fmt, file = source_format(source, cfg, read.records), str(source.path)
    columns = {**cfg.columns, **source.columns}
    convs = []
    for line, record in read.records:
        try:
            convs.append(convert_record(record, fmt, file, line, columns, prompt=prompt))
        except RecordError as exc:
            problems.append(exc.problem)
    problems.sort(key=lambda p: p.line or 0)
    return convs, problems


def _dropped(conv: Conversation, reason: str, length: int, cfg: DataConfig) -> Problem:
    why = ("longer than the length limit (truncation=drop)" if reason == "too_long"
           else "no learned token left after truncation")
    return Problem(conv.source, conv.line, f"dropped ({reason}): {why}, {length} tokens (limit {cfg.chat_length})",
                   "", "raise the length limits, or shorten the record", reason, warning=True)


def _process_chunk(records, fmt: str, file: str, columns: dict, cfg: DataConfig, tokenizer) -> Processed:
    report, problems, warnings, samples, full = SplitReport(), [], [], [], []
    dropped: dict[str, int] = {}
    for line, record in records:
        if isinstance(record, RawJSON):
            record, found = parse_raw(file, line, record)
            warnings += found
            if isinstance(record, Problem):
                problems.append(record)
                continue
        try:
            conv = convert_record(record, fmt, file, line, columns)
            sample = encode_sample(conv, tokenizer, cfg)
        except RecordError as exc:
            problems.append(exc.problem)
            continue
        except RecursionError:  # e.g. tools nested too deeply for json.dumps(indent=4)
            problems.append(Problem(file, line, "the record is nested too deeply to encode", "", "flatten it",
                                    "invalid_json"))
            continue
        warnings += conv.warnings + [Problem(file, line, problem, "", fix, kind, warning=True)
                                     for problem, fix, kind in family_notes(conv, tokenizer)]
        full.append(sample.full_length)
        report.truncated += sample.truncated
        if sample.dropped:
            dropped[sample.dropped] = dropped.get(sample.dropped, 0) + 1
            warnings.append(_dropped(conv, sample.dropped, sample.full_length, cfg))
            continue
        samples.append((sample.input_ids, sample.labels))
        report.turns += conv.num_turns
        report.tool_calls += conv.num_tool_calls
        report.tokens += len(sample.input_ids)
        report.learned_tokens += len(sample.labels) - sample.labels.count(-100)
    report.samples, report.dropped = len(samples), dropped
    return Processed(EncodedDataset.from_samples(samples), report, problems, warnings,
                     np.asarray(full, dtype=np.int64))


def _worker(bounds: tuple[int, int]) -> Processed:
    records, fmt, file, columns, cfg, tokenizer = _JOB
    return _process_chunk(records[bounds[0]:bounds[1]], fmt, file, columns, cfg, tokenizer)


def _num_workers(cfg: DataConfig, n: int) -> int:
    if cfg.num_workers is not None:
        return cfg.num_workers
    return min(os.cpu_count() or 1, 8) if n >= PARALLEL_MIN_RECORDS else 1


def _can_fork() -> bool:
    # fork is what makes the workers cheap (records shared, nothing pickled in);
    # a daemon process (e.g. a DataLoader worker) may not have children at all.
    return "fork" in mp.get_all_start_methods() and not mp.current_process().daemon


def _run_parallel(records, fmt, file, columns, cfg, tokenizer, workers: int) -> list[Processed]:
    global _JOB
    step = -(-len(records) // (workers * 4))  # a few chunks per worker evens out uneven records
    bounds = [(i, min(i + step, len(records))) for i in range(0, len(records), step)]
    _JOB = (records, fmt, file, columns, cfg, tokenizer)
    try:
        with mp.get_context("fork").Pool(workers) as pool:
            return pool.map(_worker, bounds)
    finally:
        _JOB = None


def process_source(source: Source, cfg: DataConfig, tokenizer) -> Processed:
    """Read, convert, validate and encode one source; problems are collected, not raised."""
    read = read_source(source, cfg.seed, raw=_num_workers(cfg, PARALLEL_MIN_RECORDS) > 1)
    records, problems = read.records, read.problems
    file = str(source.path)
    columns = {**cfg.columns, **source.columns}
    if not records:
        result = Processed(EncodedDataset.from_samples([]), SplitReport(), problems)
    else:
        fmt = source_format(source, cfg, records)
        workers = _num_workers(cfg, len(records))
        parts = None
        if workers > 1 and len(records) >= 2 * workers and _can_fork():
            parts = _run_parallel(records, fmt, file, columns, cfg, tokenizer, workers)
        if parts is None:
            parts = [_process_chunk(records, fmt, file, columns, cfg, tokenizer)]
        result = _merge(parts)
        result.problems = problems + result.problems
        result.report.formats[file] = fmt
    result.warnings = read.warnings + result.warnings
    result.report.records = read.count
    result.report.skipped = dict(_count_kinds(result.problems))
    result.report.warnings = _count_kinds(result.warnings)
    result.report.examples = [str(p) for p in (result.problems + result.warnings)[:10]]
    return result


def _first_record(records: list, file: str) -> tuple[int, object]:
    """The first record that is an object (parsed), for format detection."""
    for line, record in records[:1000]:
        if isinstance(record, RawJSON):
            record = parse_raw(file, line, record)[0]
        if isinstance(record, dict):
            return line, record
    line, record = records[0]
    return line, parse_raw(file, line, record)[0] if isinstance(record, RawJSON) else record


def _count_kinds(problems: list[Problem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in problems:
        counts[p.kind] = counts.get(p.kind, 0) + 1
    return counts


def _merge(parts: list[Processed]) -> Processed:
    report = SplitReport()
    for p in parts:
        report.merge(p.report)
    full = np.concatenate([p.full_lengths for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    return Processed(EncodedDataset.concat([p.dataset for p in parts]), report,
                     [q for p in parts for q in p.problems], [w for p in parts for w in p.warnings], full)


def merge_processed(parts: list[Processed]) -> Processed:
    """Several sources of one split -> one result (problems in file order)."""
    merged = _merge(parts)
    merged.report.records = sum(p.report.records for p in parts)
    merged.report.skipped = _count_kinds(merged.problems)
    merged.report.warnings = _count_kinds(merged.warnings)
    merged.report.add_lengths(merged.full_lengths)
    return merged
