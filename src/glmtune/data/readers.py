"""Files -> raw records ``(line, dict)``, with problems located by line.

Readers: ``.json`` (an array, one object, or JSON lines as in the official
AdvertiseGen ``train.json``), ``.jsonl``, ``.csv``, ``.parquet``. A bad line
of a JSON-lines file is reported and reading goes on, so one run lists every
broken line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import Problem

Item = tuple[int, Any] | Problem  # (1-based line or row, record) or a problem
_DECODER = json.JSONDecoder()


class RawJSON(str):
    """An unparsed JSON-lines record: parsed by the encoding worker, so big files parse in parallel."""


def parse_raw(path: str, line: int, raw: "RawJSON") -> Any:
    """The record of a :class:`RawJSON` line, or a :class:`Problem` if it is not valid JSON."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        return _json_problem(Path(path), line, exc)


def raw_json_lines(path: Path) -> list[tuple[int, RawJSON]] | None:
    """Unparsed non-empty lines of a JSON-lines file (``.jsonl``, or ``.json`` holding lines); None otherwise."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json") or not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        return None  # read_records reports it with its line
    lines = text.splitlines()
    if suffix == ".json":
        first = text.lstrip()[:1]
        if first != "{" or sum(1 for ln in lines[:50] if ln.strip()) < 2:
            return None
        try:
            json.loads(next(ln for ln in lines if ln.strip()))
        except json.JSONDecodeError:
            return None  # a pretty-printed object, not JSON lines
    return [(n, RawJSON(raw)) for n, raw in enumerate(lines, 1) if raw.strip()]


def _json_problem(path: Path, line: int, exc: json.JSONDecodeError) -> Problem:
    return Problem(str(path), line, f"invalid JSON: {exc.msg} at column {exc.colno}",
                   "one JSON object per record", "fix the quoting/brackets on this line", "invalid_json")


def read_jsonl(path: Path, text: str) -> Iterator[Item]:
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            yield n, json.loads(raw)
        except json.JSONDecodeError as exc:
            yield _json_problem(path, n, exc)


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def read_json_array(path: Path, text: str) -> Iterator[Item]:
    """Elements of a top-level JSON array, each with the line it starts on."""
    i = _skip_ws(text, text.index("[") + 1)
    line, counted = 1, 0
    if i < len(text) and text[i] == "]":
        return
    while i < len(text):
        line += text.count("\n", counted, i)
        counted = i
        try:
            obj, end = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            yield _json_problem(path, exc.lineno, exc)
            return  # the array is broken here; later positions cannot be trusted
        yield line, obj
        i = _skip_ws(text, end)
        if i < len(text) and text[i] == ",":
            i = _skip_ws(text, i + 1)
        elif i < len(text) and text[i] == "]":
            return
        else:
            lineno = text.count("\n", 0, i) + 1
            yield Problem(str(path), lineno, "invalid JSON: expected ',' or ']' between array elements",
                          "a JSON array of objects", "add the missing comma or bracket", "invalid_json")
            return
    yield Problem(str(path), line, "invalid JSON: the array is not closed", "a closing ']'",
                  "complete the file (was it cut off?)", "invalid_json")


def read_json(path: Path, text: str) -> Iterator[Item]:
    start = _skip_ws(text, 0)
    if start >= len(text):
        return
    if text[start] == "[":
        yield from read_json_array(path, text)
        return
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several objects: JSON lines under a .json name (AdvertiseGen)
            yield from read_jsonl(path, text)
            return
        yield _json_problem(path, exc.lineno, exc)
        return
    yield text.count("\n", 0, start) + 1, obj


def read_csv(path: Path, text: str) -> Iterator[Item]:
    reader = csv.DictReader(text.splitlines(keepends=True))
    reader.fieldnames  # reads the header, so line_num counts it
    line = reader.line_num + 1
    for row in reader:
        if None in row:
            yield Problem(str(path), line, f"row has {len(row) - 1 + len(row[None])} fields but the header has "
                          f"{len(reader.fieldnames or [])}", "one value per header column",
                          "quote values that contain commas", "invalid_csv")
        else:
            yield line, row
        line = reader.line_num + 1


def read_parquet(path: Path, _text: str | None) -> Iterator[Item]:
    from .errors import DataError

    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet files needs pyarrow, which is not installed "
                        "(fix: pip install pyarrow, or convert the file to .jsonl)") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others for a damaged file
        raise DataError(f"{path}: not a readable parquet file ({type(exc).__name__}: {' '.join(str(exc).split())}) "
                        "(fix: re-export the file, or convert it to .jsonl)") from None
    for n, row in enumerate(rows, 1):
        yield n, row


# Plain registry: file suffix -> reader. Parquet is binary and reads the path itself.
READERS: dict[str, Callable[[Path, str | None], Iterator[Item]]] = {
    ".json": read_json,
    ".jsonl": read_jsonl,
    ".csv": read_csv,
    ".parquet": read_parquet,
}


RECORDS_EXPECTED = "one or more records: a JSON array or JSON lines, CSV rows under a header, or parquet rows"


def data_files(path: str | Path) -> list[Path]:
    """The data files an input names: a file itself, or every data file of a folder (by name).

    A folder is the official layout: ``train.json``, ``dev.json``, ``test.json``
    (any of the supported types) side by side.
    """
    from .errors import DataError

    path = Path(path)
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in READERS
                   and not p.name.startswith("."))
    if not files:
        raise DataError(f"{path}: folder holds no data files (expected files ending in {', '.join(READERS)}, "
                        "e.g. train.json and dev.json; fix: pass the data files or their folder)")
    return files


def read_records(path: str | Path) -> Iterator[Item]:
    """Yield ``(line, record)`` for each record of ``path``, or a :class:`Problem` where it cannot be read."""
    from .errors import DataError

    path = Path(path)
    if path.is_dir():
        shown = ", ".join(p.name for p in data_files(path))
        raise DataError(f"{path}: is a folder, not a data file (fix: name one of its files: {shown})")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} "
                        f"(expected one of: {', '.join(READERS)}; fix: convert the file or rename it)")
    if not path.is_file():
        raise DataError(f"{path}: data file not found (fix: check the path; relative paths resolve against data_dir)")
    if reader is read_parquet:
        yield from reader(path, None)
        return
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        yield Problem(str(path), line, "the file is not valid UTF-8", "UTF-8 text",
                      "re-save the file as UTF-8 (e.g. iconv -f GBK -t UTF-8)", "encoding")
        return
    yield from reader(path, text)
