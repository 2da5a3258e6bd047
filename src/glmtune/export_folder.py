"""The output folder of ``glmtune export``: what may be written there, and what --force may replace.

An export is written into a hidden staging folder inside ``--out`` and moved
into place only when complete, so a failed export leaves the folder as it
was. ``glmtune_export.json`` records where the result came from and every file
the export wrote; ``--force`` replaces or removes exactly those files and
nothing else: a file glmtune did not write (a user's ``pytorch_model.bin``,
notes, another tool's shards) is never deleted or overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import GlmtuneError
from .files import apply_umask

MANIFEST = "glmtune_export.json"
_STAGE_PREFIX = ".glmtune-export-"


class ExportError(GlmtuneError, ValueError):
    """The export cannot be written as asked; the message says why and what to do."""


def _related(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_out_dir(out_dir: Path, *, force: bool, inputs: dict[str, Path | None]) -> None:
    """Refuse an output that is, contains or lies inside an input (even with --force), or a busy folder.

    ``inputs`` maps an option name (``--model``) to the path it gave; paths
    that do not exist (a named shape) are not folders to protect.
    """
    resolved = out_dir.resolve()
    for option, source in inputs.items():
        if source is None or not Path(source).exists():
            continue
        source = Path(source).resolve()
        # A file input (--tokenizer FILE) only clashes with an --out that is it or holds it.
        clash = (resolved == source or source.is_relative_to(resolved)) if source.is_file() else _related(resolved, source)
        if clash:
            where = "is" if resolved == source else ("is inside" if resolved.is_relative_to(source) else "contains")
            raise ExportError(f"--out {out_dir}: {where} {option} {source}, a folder being exported from; glmtune "
                              "never writes into its inputs: choose an --out outside them")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: exists and is not a folder; choose a different --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"{out_dir}: folder is not empty; choose an empty or new --out, or pass --force to "
                          f"replace a previous glmtune export there (only files its {MANIFEST} lists are replaced; "
                          "anything else is left in place)")


def previous_export_files(out_dir: Path) -> set[str]:
    """Names a previous glmtune export recorded in ``out_dir``'s manifest (plain names in that folder only)."""
    path = out_dir / MANIFEST
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(info, dict) or "glmtune_version" not in info:
        return set()
    names = info.get("files") if isinstance(info.get("files"), list) else []
    # A manifest must not make us touch anything outside this folder.
    ours = {n for n in names if isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..")}
    return ours | {MANIFEST}


class StagedExport:
    """``with StagedExport(out, provenance) as stage: write into stage.path`` -> moved into ``out`` on success."""

    def __init__(self, out_dir: Path, provenance: dict):
        self.out_dir, self.provenance = Path(out_dir), provenance
        self.files: list[str] = []
        self.replaced: list[str] = []
        self._created = False

    def __enter__(self) -> "StagedExport":
        self._created = not self.out_dir.exists()
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=_STAGE_PREFIX, dir=self.out_dir))
        except OSError as exc:
            raise ExportError(f"{self.out_dir}: cannot write there ({exc.strerror or exc}); choose a writable --out") from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._commit()
        except OSError as error:
            exc = error
        finally:
            shutil.rmtree(self.path, ignore_errors=True)  # our own staging folder only
            if self._created and self.out_dir.is_dir() and not any(self.out_dir.iterdir()):
                self.out_dir.rmdir()
        if isinstance(exc, OSError):  # disk full, read-only folder...: one clear line, not a traceback
            raise ExportError(f"{self.out_dir}: writing the export failed ({exc.strerror or exc}); nothing but "
                              f"files a glmtune export lists in {MANIFEST} was changed; fix the cause and rerun "
                              "with --force") from exc

    def _commit(self) -> None:
        staged = sorted(p.name for p in self.path.iterdir())
        ours = previous_export_files(self.out_dir)
        foreign = [n for n in [*staged, MANIFEST] if os.path.lexists(self.out_dir / n) and n not in ours]
        if foreign:
            raise ExportError(f"{self.out_dir / foreign[0]}: exists and was not written by a glmtune export (no "
                              f"{MANIFEST} there lists it); glmtune never overwrites files it did not write: move "
                              "it away or choose another --out")
        # Listed before anything moves, so an interrupted commit leaves every file it placed claimed.
        self._write_manifest(sorted((ours - {MANIFEST}) | set(staged)))
        for name in staged:
            os.replace(self.path / name, self.out_dir / name)
        stale = sorted(n for n in ours - set(staged) - {MANIFEST} if (self.out_dir / n).is_file())
        for name in stale:  # a previous export's files this one did not write again (e.g. other shard counts)
            (self.out_dir / name).unlink()
        self._write_manifest(staged)
        for name in [*staged, MANIFEST]:
            apply_umask(self.out_dir / name)  # safetensors writes 0600; only our own files are touched
        self.files, self.replaced = [*staged, MANIFEST], sorted((ours - {MANIFEST}) & set(staged)) + stale

    def _write_manifest(self, files: list[str]) -> None:
        (self.out_dir / MANIFEST).write_text(json.dumps({**self.provenance, "files": files}, indent=2) + "\n")
