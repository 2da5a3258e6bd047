"""One data file -> encoded samples + report + problems, in parallel for large files."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
from dataclasses import dataclass, field

import numpy as np

from .config import DataConfig
from .convert import convert_record, resolve_format
from .dataset import EncodedDataset
from .encode import encode_sample
from .errors import DataError, Problem, RecordError
from .readers import RECORDS_EXPECTED, RawJSON, parse_raw, raw_json_lines, read_records
from .registry import Source
from .report import SplitReport

PARALLEL_MIN_RECORDS = 20_000
_JOB: tuple | None = None  # set before forking workers so records are shared copy-on-write, not pickled


@dataclass
class Processed:
    """Result of processing records: samples, their stats, and every problem found."""

    dataset: EncodedDataset
    report: SplitReport
    problems: list[Problem] = field(default_factory=list)
    full_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def read_source(source: Source, seed: int = 0, raw: bool = False) -> tuple[list[tuple[int, object]], list[Problem], int]:
    """Records of a source (sampled by its ratio), the reading problems, and the number of records read.

    With ``raw=True`` JSON-lines records may come back unparsed (:class:`RawJSON`) for the workers to parse.
    """
    records, problems = [], []
    lines = raw_json_lines(source.path) if raw else None
    if lines is not None:
        records = lines
    else:
        for item in read_records(source.path):
            if isinstance(item, Problem):
                problems.append(item)
            else:
                records.append(item)
    read = len(records) + len(problems)
    if read == 0:
        # An empty file is almost always a wrong path or a failed export; training on
        # nothing, or "all records are valid", would hide that.
        raise DataError(f"{source.path}: the file holds no records (expected {RECORDS_EXPECTED}; fix: check the path, "
                        "or regenerate the file)")
    if source.ratio != 1.0 and records:
        rng = random.Random(f"{seed}:{source.name}:{source.path}")
        whole, frac = int(source.ratio), source.ratio - int(source.ratio)
        picked = list(range(len(records))) * whole + rng.sample(range(len(records)), round(frac * len(records)))
        records = [records[i] for i in sorted(picked)]
    return records, problems, read


def _process_chunk(records, fmt: str, file: str, columns: dict, cfg: DataConfig, tokenizer) -> Processed:
    report, problems, samples, full = SplitReport(), [], [], []
    dropped: dict[str, int] = {}
    for line, record in records:
        if isinstance(record, RawJSON):
            record = parse_raw(file, line, record)
            if isinstance(record, Problem):
                problems.append(record)
                continue
        try:
            conv = convert_record(record, fmt, file, line, columns)
        except RecordError as exc:
            problems.append(exc.problem)
            continue
        sample = encode_sample(conv, tokenizer, cfg)
        full.append(sample.full_length)
        if sample.dropped:
            dropped[sample.dropped] = dropped.get(sample.dropped, 0) + 1
            if len(report.examples) < 10:
                report.examples.append(f"{conv.where}: dropped ({sample.dropped}, {sample.full_length} tokens)")
            continue
        samples.append((sample.input_ids, sample.labels))
        report.truncated += sample.truncated
        report.turns += conv.num_turns
        report.tool_calls += conv.num_tool_calls
        report.tokens += len(sample.input_ids)
        report.learned_tokens += len(sample.labels) - sample.labels.count(-100)
    report.samples, report.dropped = len(samples), dropped
    return Processed(EncodedDataset.from_samples(samples), report, problems, np.asarray(full, dtype=np.int64))


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
    records, problems, read = read_source(source, cfg.seed, raw=_num_workers(cfg, PARALLEL_MIN_RECORDS) > 1)
    file = str(source.path)
    columns = {**cfg.columns, **source.columns}
    fmt_cfg = cfg.format if source.format == "auto" else source.format
    if not records:
        result = Processed(EncodedDataset.from_samples([]), SplitReport(), problems)
    else:
        first = _first_record(records, file)
        if isinstance(first[1], dict) or fmt_cfg != "auto":
            fmt = resolve_format(fmt_cfg, first[1], file, first[0], columns)
        else:
            fmt = "chatglm3"  # nothing readable to detect from: every record is reported as not an object
        workers = _num_workers(cfg, len(records))
        parts = None
        if workers > 1 and len(records) >= 2 * workers and _can_fork():
            parts = _run_parallel(records, fmt, file, columns, cfg, tokenizer, workers)
        if parts is None:
            parts = [_process_chunk(records, fmt, file, columns, cfg, tokenizer)]
        result = _merge(parts)
        result.problems = problems + result.problems
        result.report.formats[file] = fmt
    result.report.records = read
    result.report.skipped = dict(_count_kinds(result.problems))
    result.report.examples = [str(p) for p in result.problems[:10]] + result.report.examples
    result.report.examples = result.report.examples[:10]
    return result


def _first_record(records: list, file: str) -> tuple[int, object]:
    """The first record that is an object (parsed), for format detection."""
    for line, record in records[:1000]:
        if isinstance(record, RawJSON):
            record = parse_raw(file, line, record)
        if isinstance(record, dict):
            return line, record
    line, record = records[0]
    return line, parse_raw(file, line, record) if isinstance(record, RawJSON) else record


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
                     [q for p in parts for q in p.problems], full)


def merge_processed(parts: list[Processed]) -> Processed:
    """Several sources of one split -> one result (problems in file order)."""
    merged = _merge(parts)
    merged.report.records = sum(p.report.records for p in parts)
    merged.report.skipped = _count_kinds(merged.problems)
    merged.report.add_lengths(merged.full_lengths)
    return merged
