"""The conversation loader under its older import path (``glmtune.data.process.load_conversations`` is the one)."""

from __future__ import annotations

from .process import load_conversations

__all__ = ["load_conversations"]
