"""The one internal shape every data format is turned into.

A tool call is an assistant message with ``tool_call`` set (its content is
the rendered call), and the tool's result is an ``observation`` message —
exactly the token stream ChatGLM3 sees, so every format that describes tool
use (ChatGLM3 ``tool`` messages, OpenAI ``tool_calls``, ShareGPT
``function_call``) lands on the same messages and the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Roles that are learned unless ``loss`` says otherwise (the official demo's rule).
DEFAULT_LOSS_ROLES = ("assistant",)
NEVER_LEARNED = ("system", "user")


@dataclass
class ToolCall:
    """A call of tool ``name`` with keyword ``parameters``."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Message:
    """One turn of a conversation."""

    role: str
    """system, user, assistant or observation (a tool's result)."""
    content: str = ""
    """Text of the turn; for a tool call, empty (the call is rendered from ``tool_call``)."""
    loss: bool | None = None
    """Learn this turn? None means the default: assistant turns yes, others no."""
    tools: list | None = None
    """On a system message: tool definitions, rendered as in ChatGLM3's inference history."""
    tool_call: ToolCall | None = None
    """On an assistant message: the tool it calls (metadata line = tool name)."""
    metadata: str = ""
    """Text after the role token, before the newline (tool name for a tool call)."""

    @property
    def learned(self) -> bool:
        """Whether this message's tokens (and the token after it) get loss.

        System and user turns never (as in the official demo, whatever ``loss``
        says); an observation only with ``"loss": true``; an assistant turn
        unless ``"loss": false``.
        """
        if self.role in NEVER_LEARNED:
            return False
        return self.role in DEFAULT_LOSS_ROLES if self.loss is None else bool(self.loss)


@dataclass
class Conversation:
    """A training/evaluation record: messages plus where it came from."""

    messages: list[Message]
    tools: list | None = None
    """Tool definitions for the whole conversation (rendered as the first system message)."""
    kind: str = "chat"
    """``chat`` (the ChatGLM3 chat format) or ``base`` (context/target for base models)."""
    source: str = ""
    """File the record came from."""
    line: int | None = None
    """1-based line (or record number) in ``source``."""
    warnings: list = field(default_factory=list)
    """:class:`~glmtune.data.errors.Problem` warnings about the record (e.g. where it differs from the official demo)."""

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else self.source

    @property
    def num_turns(self) -> int:
        """Number of user turns (a base record counts as one)."""
        return sum(m.role == "user" for m in self.messages)

    @property
    def num_tool_calls(self) -> int:
        return sum(m.tool_call is not None for m in self.messages)
