"""Hub entries of a ``dataset_info.json`` (``hf_hub_url``, ``ms_hub_url``): downloaded once, read as a local file.

LLaMA-Factory loads such an entry with ``datasets.load_dataset`` (or
ModelScope's ``MsDataset`` for ``ms_hub_url``). glmtune does the same when the
optional ``datasets`` library is installed (``pip install 'glmtune[hub]'``) and
the hub answers, and writes the rows to a JSON-lines file in its own cache
(``~/.cache/glmtune/hub``, ``$GLMTUNE_CACHE/hub``), so everything after this
reads a plain file exactly as for ``file_name`` entries. A file the entry
names that is already in the data folder always wins: nothing is downloaded.

When the library is missing, the hub unreachable or offline
(``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``), or the repository unknown, the
error says so and what to do instead: download the file yourself, place it in
the data folder and give the entry a ``file_name``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import DataError

INSTALL_HINT = "the optional `datasets` library is not installed: pip install 'glmtune[hub]'"


def hub_cache_dir() -> Path:
    env = os.environ.get("GLMTUNE_CACHE")
    return Path(env) / "hub" if env else Path.home() / ".cache" / "glmtune" / "hub"


def download_error(name: str, where: str, files_dir: Path, reason: str, file_name: str | None) -> DataError:
    """The one "cannot download" error: registry file, entry, why, and where to put the file instead."""
    target = (f" (this entry reads {files_dir / file_name})" if file_name
              else " (add \"file_name\": \"FILE\" to the entry: JSON, JSON lines, CSV or parquet)")
    return DataError(f"{where}: dataset {name!r}: cannot download {name} from the hub ({reason}); place the file in "
                     f"{files_dir} and use file_name{target}")


def hub_file(name: str, entry: dict, where: str, files_dir: Path) -> Path:
    """A local JSON-lines copy of a hub entry's rows (downloaded now unless already cached)."""
    file_name = entry.get("file_name") or None
    key = _hub_key(entry)
    if key is None:
        other = next(k for k in ("om_hub_url", "script_url", "cloud_file_name") if entry.get(k))
        raise download_error(name, where, files_dir, f"{other} {entry[other]!r}: glmtune reads only the Hugging "
                             "Face and ModelScope hubs", file_name)
    spec = {k: entry.get(k) for k in ("subset", "split", "folder", "revision")}
    spec["split"] = spec["split"] or "train"
    url = entry[key]
    digest = hashlib.sha256(json.dumps([key, url, spec], sort_keys=True).encode()).hexdigest()[:16]
    cached = hub_cache_dir() / f"{url.replace('/', '--')}-{spec['split']}-{digest}.jsonl"
    if cached.is_file():
        return cached
    try:
        rows = _load_rows(key, url, spec)
    except DataError as exc:
        raise download_error(name, where, files_dir, f"{key} {url!r}: {exc}", file_name) from None
    _write_jsonl(rows, cached)
    return cached


def _hub_key(entry: dict) -> str | None:
    """Which hub to read, as LLaMA-Factory chooses: ModelScope with USE_MODELSCOPE_HUB=1, else Hugging Face."""
    if entry.get("ms_hub_url") and (os.environ.get("USE_MODELSCOPE_HUB", "0").lower() in ("1", "true")
                                    or not entry.get("hf_hub_url")):
        return "ms_hub_url"
    return "hf_hub_url" if entry.get("hf_hub_url") else None


def _load_rows(key: str, url: str, spec: dict) -> list[dict]:
    """Rows of one hub dataset split; any failure (no library, offline, unknown repo) is a DataError saying why."""
    try:
        # deferred: `datasets` is an optional extra (glmtune[hub]) and slow to import
        import datasets
    except ImportError:
        raise DataError(INSTALL_HINT) from None
    try:
        if key == "ms_hub_url":
            loaded = _modelscope(url, spec)
        else:
            loaded = datasets.load_dataset(url, name=spec["subset"], data_dir=spec["folder"], split=spec["split"],
                                           revision=spec["revision"])
    except DataError:
        raise
    except Exception as exc:  # network, offline mode, unknown repo, bad split: the library's types vary by version
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{type(exc).__name__}: {text[:300]}") from None
    return [dict(row) for row in loaded]


def _modelscope(url: str, spec: dict):
    try:
        # deferred: ModelScope is optional and only an ms_hub_url-only entry needs it
        from modelscope import MsDataset
    except ImportError:
        raise DataError("the optional `modelscope` library is not installed (pip install modelscope), and the entry "
                        "has no hf_hub_url") from None
    return MsDataset.load(url, subset_name=spec["subset"], data_dir=spec["folder"], split=spec["split"],
                          version=spec["revision"]).to_hf_dataset()


def _write_jsonl(rows: list[dict], path: Path) -> None:
    """Written beside and renamed: an interrupted download never leaves a half file that looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
