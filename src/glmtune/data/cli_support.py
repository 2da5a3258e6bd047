"""Helpers for ``glmtune data``: whole-file conversion with every problem collected."""

from __future__ import annotations

from pathlib import Path

from .chat_format import build_prompt
from .config import DataConfig
from .convert import convert_record, resolve_format
from .errors import Problem, RecordError
from .messages import Conversation
from .process import read_source
from .registry import Source


def load_conversations(path: Path, cfg: DataConfig) -> tuple[list[Conversation], list[Problem]]:
    """Valid conversations of ``path`` and the problems of the others (nothing raised per record)."""
    records, problems, _ = read_source(Source(path), cfg.seed)
    if not records:
        return [], problems
    first = next(((ln, r) for ln, r in records if isinstance(r, dict)), records[0])
    fmt = resolve_format(cfg.format, first[1], str(path), first[0], cfg.columns)
    convs = []
    for line, record in records:
        try:
            convs.append(convert_record(record, fmt, str(path), line, cfg.columns))
        except RecordError as exc:
            problems.append(exc.problem)
    problems.sort(key=lambda p: p.line or 0)
    return convs, problems


def prompt_ids(conv: Conversation, tokenizer, cfg: DataConfig) -> list[int]:
    """Generation prompt of a record: its messages without trailing assistant turns, then ``<|assistant|>``.

    A base record's prompt is ``[gMASK] sop`` + its context (cut to ``max_input_length``).
    """
    if conv.kind == "base":
        ids = build_prompt(conv, tokenizer)
        return ids[: cfg.max_input_length] if cfg.max_input_length else ids
    messages = list(conv.messages)
    while messages and messages[-1].role == "assistant":
        messages.pop()
    return build_prompt(Conversation(messages, tools=conv.tools), tokenizer)
