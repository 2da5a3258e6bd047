"""Conversation -> training sample under the length policy of :class:`DataConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from .chat_format import IGNORE_INDEX
from .config import DataConfig
from .family_format import encode_base, encode_chat, family_cuts
from .messages import Conversation


@dataclass
class Sample:
    """An encoded sample and what the length policy did to it."""

    input_ids: list[int]
    labels: list[int]
    full_length: int
    """Length before truncation."""
    truncated: bool = False
    dropped: str | None = None
    """Why the sample is left out (``too_long`` under truncation=drop, ``no_labels_after_truncation``)."""


def _cut(ids: list[int], labels: list[int], cap: int | None) -> tuple[list[int], list[int], bool]:
    if cap is None or len(ids) <= cap:
        return ids, labels, False
    return ids[:cap], labels[:cap], True


def encode_sample(conv: Conversation, tokenizer, cfg: DataConfig) -> Sample:
    """Encode ``conv`` and apply truncation; see :class:`DataConfig` for the policy."""
    if conv.kind == "base":
        user, assistant = conv.messages
        ids, labels = encode_base(user.content, assistant.content, tokenizer)
        full = len(ids)
        ids, labels = encode_base(user.content, assistant.content, tokenizer,
                                  cfg.max_input_length, cfg.max_output_length)
        truncated = len(ids) < full
        ids, labels, cut = _cut(ids, labels, cfg.max_seq_length)
        truncated = truncated or cut
    else:
        ids, labels = encode_chat(conv, tokenizer, combine=cfg.combine)
        full = len(ids)
        if family_cuts(tokenizer):
            # ChatGLM2 cuts prompt and answer separately, as its official preprocessing does.
            ids, labels = encode_chat(conv, tokenizer, combine=cfg.combine, max_source=cfg.max_input_length,
                                      max_target=cfg.max_output_length)
        ids, labels, truncated = _cut(ids, labels, cfg.chat_length)
        truncated = truncated or len(ids) < full
    sample = Sample(ids, labels, full, truncated)
    if truncated and cfg.truncation == "drop":
        sample.dropped = "too_long"
    elif labels.count(IGNORE_INDEX) == len(labels):
        sample.dropped = "no_labels_after_truncation"
    return sample
