"""Files -> raw records ``(line, dict)``, with problems located by line.

Readers: ``.json`` (an array, one object, or JSON lines as in the official
AdvertiseGen ``train.json``), ``.jsonl``, ``.csv``, ``.parquet``. A bad line
of a JSON-lines file is reported and reading goes on, so one run lists every
broken line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import DataError, Problem

Item = tuple[int, Any] | Problem  # (1-based line or row, record) or a problem


def _checked_object(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook``: a dict, remembering keys that occur twice (json keeps the last silently)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        _DUPLICATES.extend(k for k, _ in pairs if k in seen or seen.add(k))
    return obj


_DUPLICATES: list[str] = []  # filled by _checked_object during one parse (parsing is single-threaded per process)
_DECODER = json.JSONDecoder(object_pairs_hook=_checked_object)


def split_lines(text: str) -> list[str]:
    """Lines of a JSON-lines text: split on ``\n`` only.

    ``str.splitlines`` also splits on U+2028, U+2029, U+0085 (and others),
    which are valid raw characters inside JSON strings (common in scraped
    text): splitting there breaks the record and shifts every later line number.
    """
    lines = text.split("\n")
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _blank(line: str) -> bool:
    return not line.strip(" \t\r\n")


def _deep_problem(path: Path | str, line: int) -> Problem:
    return Problem(str(path), line, "JSON nested too deeply to read", "records nested a few hundred levels at most",
                   "flatten the record (is the file damaged?)", "invalid_json")


def duplicate_problem(path: Path | str, line: int, keys: list[str]) -> Problem:
    """A warning: a JSON object of the record repeats a key (json keeps only the last value)."""
    shown = ", ".join(repr(k) for k in dict.fromkeys(keys))
    return Problem(str(path), line, f"duplicate key {shown} in one JSON object: only the last value is used",
                   "each key once per object", "remove or rename the repeated key", "duplicate_key", warning=True)


def loads(text: str, path: Path | str, line: int) -> tuple[Any, list[Problem]]:
    """``json.loads`` of one record: (value, warnings), or (a :class:`Problem`, []) when it is not valid JSON."""
    del _DUPLICATES[:]
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        return _json_problem(Path(path), line, exc), []
    except RecursionError:
        return _deep_problem(path, line), []
    return value, ([duplicate_problem(path, line, list(_DUPLICATES))] if _DUPLICATES else [])


class RawJSON(str):
    """An unparsed JSON-lines record: parsed by the encoding worker, so big files parse in parallel."""


def parse_raw(path: str, line: int, raw: "RawJSON") -> tuple[Any, list[Problem]]:
    """The record of a :class:`RawJSON` line (or a :class:`Problem` if it is not valid JSON), and its warnings."""
    return loads(raw, path, line)


def raw_json_lines(path: Path) -> list[tuple[int, RawJSON]] | None:
    """Unparsed non-empty lines of a JSON-lines file (``.jsonl``, or ``.json`` holding lines); None otherwise."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json") or not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        return None  # read_records reports it with its line
    lines = split_lines(text)
    if suffix == ".json":
        first = text.lstrip()[:1]
        if first != "{" or sum(1 for ln in lines[:50] if not _blank(ln)) < 2:
            return None
        try:
            json.loads(next(ln for ln in lines if not _blank(ln)))
        except (json.JSONDecodeError, RecursionError):
            return None  # a pretty-printed object, not JSON lines (read_records reports what is wrong)
    return [(n, RawJSON(raw)) for n, raw in enumerate(lines, 1) if not _blank(raw)]


def _json_problem(path: Path, line: int, exc: json.JSONDecodeError) -> Problem:
    return Problem(str(path), line, f"invalid JSON: {exc.msg} at column {exc.colno}",
                   "one JSON object per record", "fix the quoting/brackets on this line", "invalid_json")


def read_jsonl(path: Path, text: str) -> Iterator[Item]:
    for n, raw in enumerate(split_lines(text), 1):
        if _blank(raw):
            continue
        value, warnings = loads(raw, path, n)
        yield from warnings
        yield value if isinstance(value, Problem) else (n, value)


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
        del _DUPLICATES[:]
        try:
            obj, end = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            yield _json_problem(path, exc.lineno, exc)
            return  # the array is broken here; later positions cannot be trusted
        except RecursionError:
            yield _deep_problem(path, line)
            return
        if _DUPLICATES:
            yield duplicate_problem(path, line, list(_DUPLICATES))
        yield line, obj
        i = _skip_ws(text, end)
        if i < len(text) and text[i] == ",":
            i = _skip_ws(text, i + 1)
        elif i < len(text) and text[i] == "]":
            yield from _nothing_after(path, text, i + 1)
            return
        else:
            lineno = text.count("\n", 0, i) + 1
            yield Problem(str(path), lineno, "invalid JSON: expected ',' or ']' between array elements",
                          "a JSON array of objects", "add the missing comma or bracket", "invalid_json")
            return
    yield Problem(str(path), line, "invalid JSON: the array is not closed", "a closing ']'",
                  "complete the file (was it cut off?)", "invalid_json")


def _nothing_after(path: Path, text: str, end: int) -> Iterator[Problem]:
    """A problem when more than whitespace follows the top-level value (json.load would refuse the file)."""
    rest = _skip_ws(text, end)
    if rest < len(text):
        lineno = text.count("\n", 0, rest) + 1
        yield Problem(str(path), lineno, "more data after the closing ']' of the JSON array (it would be ignored)",
                      "one JSON array per .json file, or one object per line (.jsonl)",
                      "merge the arrays into one, or remove what follows it", "invalid_json")


def read_json(path: Path, text: str) -> Iterator[Item]:
    start = _skip_ws(text, 0)
    if start >= len(text):
        return
    if text[start] == "[":
        yield from read_json_array(path, text)
        return
    line = text.count("\n", 0, start) + 1
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several objects: JSON lines under a .json name (AdvertiseGen)
            yield from read_jsonl(path, text)
            return
        yield _json_problem(path, exc.lineno, exc)
        return
    except RecursionError:
        yield _deep_problem(path, line)
        return
    _, warnings = loads(text, path, line)  # parsed again only for its duplicate keys: one object, small
    yield from warnings
    yield line, obj


def read_csv(path: Path, text: str) -> Iterator[Item]:
    # newline="": line breaks inside quoted fields are kept, and only \r/\n end a row (not U+2028).
    # strict: an unclosed quote is an error instead of swallowing every following row into one field.
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        reader.fieldnames  # reads the header, so line_num counts it
    except csv.Error as exc:
        yield _csv_problem(path, 1, exc)
        return
    line = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield _csv_problem(path, line, exc)
            return  # the rest of the file is inside the broken field: nothing after it can be trusted
        if None in row:
            yield Problem(str(path), line, f"row has {len(row) - 1 + len(row[None])} fields but the header has "
                          f"{len(reader.fieldnames or [])}", "one value per header column",
                          "quote values that contain commas", "invalid_csv")
        else:
            yield line, row
        line = reader.line_num + 1


def _csv_problem(path: Path, line: int, exc: csv.Error) -> Problem:
    return Problem(str(path), line, f"invalid CSV: {exc} (a quoted field that starts on this row is not closed)",
                   "each opening quote closed before the next row", "close the quote, or double quotes inside "
                   "a quoted value (\"\")", "invalid_csv")


def drop_nulls(value: Any) -> Any:
    """A parquet value without the null struct fields pyarrow invents.

    A parquet column of structs has every key any row has: pyarrow fills the
    keys a row lacks with None (``{"city": "Paris", "zone": None}``). A null
    struct field is read back as absent, so parquet and JSON lines give the
    same records. (Parquet cannot tell a missing key from an explicit null.)
    """
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def read_parquet(path: Path, _text: str | None) -> Iterator[Item]:
    try:
        # deferred: pyarrow is heavy; only parquet files need it
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
        yield n, drop_nulls(row)


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
