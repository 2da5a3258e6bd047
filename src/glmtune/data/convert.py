"""Format detection, column mapping, and whole-record validation."""

from __future__ import annotations

from typing import Any

from .chat_format import prompt_history
from .dataset_info import apply_tags, split_tags
from .errors import DataError, record_error
from .formats import FORMATS, _Ctx, _structured
from .messages import Conversation


def apply_columns(record: dict, columns: dict[str, str]) -> dict:
    """Rename the record's keys by ``columns`` (source -> target); unmapped keys stay.

    ``@tag`` entries are a LLaMA-Factory dataset's sharegpt tags (:mod:`glmtune.data.dataset_info`).
    """
    if not columns:
        return record
    columns, tags = split_tags(columns)
    if tags:
        return apply_tags(apply_columns(record, columns), tags)
    out = {k: v for k, v in record.items() if k not in columns}
    for src, dst in columns.items():
        if src in record:
            out[dst] = record[src]
    return out


def _first_role_key(items: Any) -> str | None:
    items = _structured(items)
    if isinstance(items, list) and items and isinstance(items[0], dict):
        return "from" if "from" in items[0] else "role" if "role" in items[0] else None
    return None


def candidate_formats(record: dict) -> list[str]:
    """Formats whose keys the record has (after column mapping)."""
    found = []
    if "conversations" in record:
        found.append("sharegpt" if _first_role_key(record["conversations"]) == "from" else "chatglm3")
    if "messages" in record:
        found.append("sharegpt" if _first_role_key(record["messages"]) == "from" else "openai")
    if "instruction" in record and "output" in record:
        found.append("alpaca")
    if ("context" in record and "target" in record) or ("prompt" in record and "response" in record):
        found.append("base")
    if "user" in record and "assistant" in record:
        found.append("columns")
    if not found and "prompt" in record:  # ChatGLM2's generation inputs: {"prompt", "history"}, no response
        found.append("base")
    return found


def detect_format(record: Any, file: str, line: int | None) -> str:
    """The format of ``record`` from its keys; a :class:`DataError` when none or several fit."""
    if not isinstance(record, dict):
        raise record_error(file, line, f"record is a JSON {type(record).__name__}", "a JSON object per record",
                           "write each record as {...}", "not_object")
    found = candidate_formats(record)
    if len(found) == 1:
        return found[0]
    keys = ", ".join(sorted(map(str, record))[:12]) or "none"
    if not found:
        raise DataError(
            f"{file}:{line}: cannot tell the data format from the keys ({keys}) "
            "(expected conversations [chatglm3/sharegpt], messages [openai], instruction+output [alpaca], "
            "context+target or prompt+response(+history) [base]; fix: pass --format, or map your columns, "
            "e.g. data.columns={content: user, summary: assistant})")
    raise DataError(f"{file}:{line}: the keys ({keys}) fit several formats: {', '.join(found)} "
                    f"(fix: pass --format {found[0]} or another of them)")


def convert_record(record: Any, fmt: str, file: str, line: int | None,
                   columns: dict[str, str] | None = None, *, prompt: bool = False) -> Conversation:
    """One raw record -> validated :class:`Conversation`; raises :class:`RecordError` naming file:line.

    ``prompt=True`` reads the record as a generation prompt: training's checks
    (something to learn) do not apply, it needs a user or observation turn to reply to.
    """
    ctx = _Ctx(file, line, fmt, prompt)
    if not isinstance(record, dict):
        raise ctx.error(f"record is a JSON {type(record).__name__}", "a JSON object per record",
                        "write each record as {...}", "not_object")
    record = apply_columns(record, columns or {})
    try:
        conv = FORMATS[fmt](record, ctx)
    except RecursionError:
        raise ctx.error("the record is nested too deeply", "records nested a few hundred levels at most",
                        "flatten the record", "invalid_json") from None
    conv.source, conv.line, conv.warnings = file, line, ctx.warnings
    validate(conv, ctx)
    return conv


def validate(conv: Conversation, ctx: _Ctx) -> None:
    """Checks every format shares: not empty, something to learn (or, for a prompt, something to reply to)."""
    if not conv.messages:
        raise ctx.error("empty conversation", "at least a user and an assistant message",
                        "remove the record or fill it", "empty_conversation")
    if ctx.prompt:
        history = prompt_history(conv).messages
        if conv.kind == "chat" and not any(m.role in ("user", "observation") for m in history):
            raise ctx.error("nothing to reply to", "a user (or observation) message before the answer",
                            "add the user's message", "no_user_message")
    elif conv.kind == "chat" and not any(m.learned for m in conv.messages):
        raise ctx.error("no trainable message", "at least one assistant message without \"loss\": false",
                        "add the assistant's answer (or remove the record)", "no_trainable")
    _check_tool_names(conv, ctx)


def _tool_names(tools) -> set[str] | None:
    """Names of the defined tools, or None when the definitions do not all say (then nothing is checked)."""
    if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools):
        return None
    return {t["name"] for t in tools}


def _check_tool_names(conv: Conversation, ctx: _Ctx) -> None:
    # A call to an undefined tool teaches the model to call tools that do not exist.
    defined = [conv.tools] + [m.tools for m in conv.messages if m.role == "system" and m.tools is not None]
    defined = [t for t in defined if t]
    if not defined:
        return
    names = [_tool_names(t) for t in defined]
    if any(n is None for n in names):
        return
    known = set().union(*names)
    for m in conv.messages:
        if m.tool_call is not None and m.tool_call.name not in known:
            raise ctx.error(f"tool call {m.tool_call.name!r} is not among the defined tools ({', '.join(sorted(known))})",
                            "calls to tools listed in 'tools'", "fix the tool name or add its definition",
                            "unknown_tool")


def resolve_format(fmt: str, first_record: Any, file: str, line: int | None,
                   columns: dict[str, str] | None) -> str:
    """The configured format, or the one detected from the first record (after column mapping)."""
    if isinstance(first_record, dict):
        _check_columns(first_record, columns or {}, file, line)
    if fmt != "auto":
        if fmt not in FORMATS:
            raise DataError(f"unknown format {fmt!r} (expected one of: auto, {', '.join(FORMATS)})")
        return fmt
    record = apply_columns(first_record, columns or {}) if isinstance(first_record, dict) else first_record
    return detect_format(record, file, line)


def _check_columns(record: dict, columns: dict[str, str], file: str, line: int | None) -> None:
    """A column mapping must name columns the file has (checked on its first record)."""
    missing = [src for src in split_tags(columns)[0] if src not in record]
    if missing:
        have = ", ".join(repr(k) for k in list(record)[:20]) or "none"
        raise DataError(f"{file}:{line}: the column mapping names column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(m) for m in missing)}, which the file does not have (its columns: {have}; "
                        "fix: correct data.columns / --columns)")
