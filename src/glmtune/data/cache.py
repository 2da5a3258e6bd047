"""Cache of encoded splits, keyed by everything that changes the result.

The key hashes: file contents (not mtimes, so an edited file never hits) and
the file's path (the cached report names the files, so a copy elsewhere is
encoded afresh and its report names the copy), format and column mapping, sampling ratios, the
tokenizer model bytes, the family and its template version, the length policy and
skip_invalid. A stale cache is therefore impossible by construction; entries
are written to a temporary folder and renamed, so a crash never leaves a
half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

from .family_format import template_version
from .config import DataConfig
from .dataset import EncodedDataset
from .registry import Source
from .report import SplitReport

CACHE_VERSION = 2


def default_cache_dir() -> Path:
    env = os.environ.get("GLMTUNE_CACHE")
    return Path(env) / "data" if env else Path.home() / ".cache" / "glmtune" / "data"


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    # (size, mtime) are part of the lru key only, so an unchanged file is hashed once per process.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    st = path.stat()
    return _file_digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


def cache_key(sources: list[Source], cfg: DataConfig, tokenizer) -> str:
    model_file = getattr(tokenizer, "model_file", None)
    parts = {
        "cache_version": CACHE_VERSION,
        "template": template_version(tokenizer),
        "tokenizer": file_digest(Path(model_file)) if model_file else repr(type(tokenizer)),
        "specials": getattr(tokenizer, "special_tokens", None),
        "sources": [{"digest": file_digest(s.path), "path": str(s.path), "resolved": str(s.path.resolve()),
                     "suffix": s.path.suffix.lower(), "format": cfg.format if s.format == "auto" else s.format,
                     "columns": {**cfg.columns, **s.columns}, "ratio": s.ratio, "name": s.name,
                     "select": [s.max_samples, s.holdout, s.part]}
                    for s in sources],
        "lengths": [cfg.max_input_length, cfg.max_output_length, cfg.max_seq_length, cfg.truncation],
        "combine": cfg.combine,
        "skip_invalid": cfg.skip_invalid,
        "seed": cfg.seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load(cache_dir: Path, key: str) -> tuple[EncodedDataset, SplitReport] | None:
    folder = cache_dir / key
    try:
        report = SplitReport(**json.loads((folder / "report.json").read_text()))
        return EncodedDataset.load(folder), report
    except (OSError, ValueError, TypeError):
        return None  # absent or unreadable: rebuild


def save(cache_dir: Path, key: str, dataset: EncodedDataset, report: SplitReport) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
        dataset.save(tmp)
        (tmp / "report.json").write_text(json.dumps(asdict(report), ensure_ascii=False))
        try:
            tmp.rename(cache_dir / key)
        except OSError:  # another process wrote it first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        warnings.warn(f"glmtune: could not write the data cache in {cache_dir} ({exc}); continuing without it")
