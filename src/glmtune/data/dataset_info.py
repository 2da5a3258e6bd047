"""LLaMA-Factory ``dataset_info.json`` entries -> glmtune data sources.

An entry (LLaMA-Factory ``data/README.md``) names its file (``file_name``), its
``formatting`` (``alpaca``, the default, or ``sharegpt``), ``columns`` in
LLaMA-Factory's direction (*role -> column of the file*, e.g.
``{"prompt": "instruction", "response": "output"}``, the opposite of glmtune's
``data.columns``) and, for sharegpt, ``tags`` naming the message keys and role
values (``role_tag``, ``content_tag``, ``user_tag``, ...). Both are turned into
glmtune's own mapping here, so such a record encodes exactly like the same
record written in glmtune's native alpaca/sharegpt format.

Not supported, each refused with the reason: ``ranking`` (preference data for
reward modeling / DPO, which glmtune does not train), ``script_url`` and
``om_hub_url`` entries, multimodal and KTO columns. Hub entries (``hf_hub_url``,
``ms_hub_url``) read ``file_name`` from the data folder when it is there, else
are downloaded through the optional ``datasets`` library (:mod:`.hub`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import closest
from .errors import DataError
from .hub import hub_file

# LLaMA-Factory role -> glmtune's canonical key, per formatting (src/llamafactory/data/parser.py, DatasetAttr).
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                  "system": "system"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
UNSUPPORTED_COLUMNS = {
    "images": "glmtune trains text-only models (ChatGLM3 / GLM)",
    "videos": "glmtune trains text-only models (ChatGLM3 / GLM)",
    "audios": "glmtune trains text-only models (ChatGLM3 / GLM)",
    "chosen": "preference data (ranking) is for reward modeling / DPO, which glmtune does not train",
    "rejected": "preference data (ranking) is for reward modeling / DPO, which glmtune does not train",
    "kto_tag": "KTO training is not supported",
}
# LLaMA-Factory tag -> (its default, the value glmtune's sharegpt reader uses).
TAG_DEFAULTS = {"role_tag": ("from", "from"), "content_tag": ("value", "value"), "user_tag": ("human", "human"),
                "assistant_tag": ("gpt", "gpt"), "observation_tag": ("observation", "observation"),
                "function_tag": ("function_call", "function_call"), "system_tag": ("system", "system")}
TAG_PREFIX = "@"
"""Tags travel inside a source's column mapping as ``@role_tag`` etc. (no file column starts with ``@``), so
the cache key and every reader of the mapping see them with no extra plumbing."""
ENTRY_KEYS = ("file_name", "formatting", "columns", "tags", "ranking", "hf_hub_url", "ms_hub_url", "om_hub_url",
              "script_url", "cloud_file_name", "subset", "split", "folder", "num_samples", "revision", "file_sha1")
"""``file_sha1`` (older LLaMA-Factory and ChatGLM-Efficient-Tuning registries) is accepted and not checked."""
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")


def is_dataset_info_entry(entry) -> bool:
    """True for an entry in LLaMA-Factory's shape (glmtune's own registry entries say ``file``)."""
    return isinstance(entry, dict) and "file" not in entry and any(k in entry for k in ENTRY_KEYS)


def entry_source(name: str, entry: dict, where: str, files_dir: Path) -> tuple[Path, str, dict[str, str]]:
    """(file, glmtune format, glmtune column mapping incl. tags) of one dataset_info entry.

    The file is ``file_name`` (relative to ``files_dir``); a hub entry (``hf_hub_url``/``ms_hub_url``) whose file is not
    there is downloaded through the ``datasets`` library (:mod:`.hub`), or refused saying where to put the file.
    """
    _check_entry(name, entry, where)
    formatting = entry.get("formatting", "alpaca")
    columns = translate_columns(name, formatting, entry.get("columns") or {}, where)
    if formatting == "sharegpt":
        columns.update(translate_tags(name, entry.get("tags") or {}, where))
    elif entry.get("tags"):
        raise DataError(f"{where}: dataset {name!r}: tags apply to sharegpt formatting only (LLaMA-Factory ignores "
                        "them for alpaca; fix: remove them or set formatting: sharegpt)")
    file_name = entry.get("file_name")
    if file_name and ((files_dir / file_name).exists() or not any(entry.get(k) for k in HUB_KEYS)):
        return Path(file_name), formatting, columns  # resolved (and a missing one reported) by the registry
    return hub_file(name, entry, where, files_dir), formatting, columns


def _check_entry(name: str, entry: dict, where: str) -> None:
    """Refuse what glmtune cannot read, each with the reason and the fix."""
    unknown = [k for k in entry if k not in ENTRY_KEYS]
    if unknown:
        raise DataError(f"{where}: dataset {name!r}: unknown key {unknown[0]!r}; {closest(unknown[0], ENTRY_KEYS)}"
                        f"valid keys: {', '.join(ENTRY_KEYS)}")
    if entry.get("ranking"):
        raise DataError(f"{where}: dataset {name!r} is a preference dataset (ranking: true): reward modeling and "
                        "DPO/ORPO/KTO are not supported by glmtune (fix: use an SFT dataset)")
    if entry.get("num_samples") is not None:
        raise DataError(f"{where}: dataset {name!r}: num_samples is not supported; sample with a ratio instead "
                        f"(dataset: {name}:0.5), or cap every dataset with max_samples")
    hub = any(entry.get(k) for k in HUB_KEYS)
    if not hub and (entry.get("split", "train") != "train" or entry.get("subset") or entry.get("folder")):
        raise DataError(f"{where}: dataset {name!r}: split/subset/folder select parts of a hub dataset; glmtune "
                        "reads one local file per entry (fix: point file_name at that part's file)")
    if not hub and (not isinstance(entry.get("file_name"), str) or not entry["file_name"]):
        raise DataError(f"{where}: dataset {name!r} has no file_name (expected \"file_name\": \"data.json\")")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise DataError(f"{where}: dataset {name!r}: formatting {formatting!r} is unknown "
                        "(expected alpaca or sharegpt, as in LLaMA-Factory)")


def translate_columns(name: str, formatting: str, columns, where: str) -> dict[str, str]:
    """LLaMA-Factory's ``{role: file column}`` -> glmtune's ``{file column: canonical key}`` (identities left out)."""
    if not isinstance(columns, dict):
        raise DataError(f"{where}: dataset {name!r}: columns must be an object {{role: column}}")
    known = ALPACA_COLUMNS if formatting == "alpaca" else SHAREGPT_COLUMNS
    out: dict[str, str] = {}
    for role, column in columns.items():
        if role in UNSUPPORTED_COLUMNS:
            raise DataError(f"{where}: dataset {name!r}: column {role!r} is not supported: {UNSUPPORTED_COLUMNS[role]}")
        if role not in known:
            raise DataError(f"{where}: dataset {name!r}: column {role!r} does not apply to {formatting} formatting "
                            f"(valid: {', '.join(known)}); LLaMA-Factory's columns map a role to a column of the file")
        if column == "" or column is None:
            continue  # ChatGLM-Efficient-Tuning's registries write "query": "" for "no such column"
        if not isinstance(column, str):
            raise DataError(f"{where}: dataset {name!r}: columns.{role} must name a column of the file")
        if column != known[role]:
            out[column] = known[role]
    return out


def translate_tags(name: str, tags, where: str) -> dict[str, str]:
    """Non-default sharegpt tags as ``@tag -> value`` entries of the column mapping."""
    if not isinstance(tags, dict):
        raise DataError(f"{where}: dataset {name!r}: tags must be an object such as {{\"role_tag\": \"role\"}}")
    out = {}
    for tag, value in tags.items():
        if tag not in TAG_DEFAULTS:
            raise DataError(f"{where}: dataset {name!r}: unknown tag {tag!r} (valid: {', '.join(TAG_DEFAULTS)})")
        if not isinstance(value, str) or not value:
            raise DataError(f"{where}: dataset {name!r}: tags.{tag} must be a non-empty string")
        if value != TAG_DEFAULTS[tag][0]:
            out[TAG_PREFIX + tag] = value
    return out


def split_tags(columns: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(plain column mapping, tags) of a mapping that may carry ``@tag`` entries."""
    plain = {k: v for k, v in columns.items() if not k.startswith(TAG_PREFIX)}
    tags = {k[len(TAG_PREFIX):]: v for k, v in columns.items() if k.startswith(TAG_PREFIX)}
    return plain, tags


def apply_tags(record: dict, tags: dict[str, str]) -> dict:
    """Rewrite a record's messages from the dataset's tags to sharegpt's defaults (``from``/``value``, ``human``...).

    Role values that no tag names are kept as they are (the sharegpt reader then
    names them as unknown), so nothing is silently re-labelled.
    """
    if not tags:
        return record
    role_key, content_key = tags.get("role_tag", "from"), tags.get("content_tag", "value")
    roles = {tags.get(tag, default): ours for tag, (default, ours) in TAG_DEFAULTS.items()
             if tag not in ("role_tag", "content_tag")}
    out = dict(record)
    for key in ("conversations", "messages"):
        messages = record.get(key)
        if isinstance(messages, list):
            out[key] = [_retag(m, role_key, content_key, roles) for m in messages]
    return out


def _retag(msg, role_key: str, content_key: str, roles: dict[str, str]):
    if not isinstance(msg, dict):
        return msg  # the reader reports it
    out = {k: v for k, v in msg.items() if k not in (role_key, content_key)}
    if role_key in msg:
        role = msg[role_key]
        out["from"] = roles.get(role, role) if isinstance(role, str) else role
    if content_key in msg:
        out["value"] = msg[content_key]
    return out


def bundled_registry() -> Path:
    """The registry of common public datasets shipped with glmtune (file names and columns, no data)."""
    return Path(str(resources.files("glmtune.resources").joinpath("dataset_info.json")))
