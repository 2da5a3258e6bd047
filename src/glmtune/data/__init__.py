"""The data layer: files -> records -> messages -> (input_ids, labels) -> batches.

Main entry points: :class:`DataConfig`, :func:`prepare_splits`, each model family's
format through :mod:`glmtune.data.family_format`, collators in :mod:`glmtune.data.collate`.
"""

from .config import DataConfig
from .errors import DataError, DataProblems, Problem
from .family_format import build_prompt, encode_base, encode_chat, parse_reply, render_tool_call
from .messages import Conversation, Message, ToolCall
from .pipeline import Splits, prepare_splits
from .report import DataReport, SplitReport

# collate imports torch: loaded on first use (PEP 562), so the config layer and `--help-config` stay light.
_COLLATE = ("PackedCollator", "PackedDataset", "PaddedCollator", "make_collator", "pack", "training_dataset")


def __getattr__(name: str):
    if name in _COLLATE:
        # deferred: imports torch
        from . import collate

        return getattr(collate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Conversation", "DataConfig", "DataError", "DataProblems", "DataReport", "Message", "PackedCollator",
    "PackedDataset", "PaddedCollator", "Problem", "SplitReport", "Splits", "ToolCall", "build_prompt",
    "encode_base", "encode_chat", "make_collator", "pack", "parse_reply", "prepare_splits", "render_tool_call",
    "training_dataset",
]
