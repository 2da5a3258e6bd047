"""The format functions every caller uses: each asks the tokenizer's model family (``glmtune.families``).

``build_prompt(messages, tokenizer)`` gives ChatGLM3's prompt for a ChatGLM3 tokenizer, GLM-4's for a
GLM-4 one, and so on; nothing outside ``glmtune.families`` needs to know which.
"""

from __future__ import annotations

from typing import Any

from .errors import DataError
from .messages import Conversation, ToolCall


def _family(tokenizer):
    # Imported at call time: glmtune.families imports data.chat_format and the tokenizer module, which import
    # the data package; importing it here at module level would be a cycle.
    from .. import families

    return families.get_family(families.DEFAULT) if tokenizer is None else families.family_of(tokenizer)


def build_prompt(messages, tokenizer) -> list[int]:
    """Generation prompt ids of a conversation or message list (dicts or :class:`Message`), in the family's format."""
    return _family(tokenizer).build_prompt(messages, tokenizer)


def parse_reply(text: str, tokenizer=None) -> tuple[str, ToolCall | None]:
    """(content, tool call or None) of a decoded reply, as the family's official chat code parses it.

    Without a tokenizer: ChatGLM3's syntax (what glmtune understood before it had families).
    """
    return _family(tokenizer).parse_reply(text)


def render_tool_call(name: str, parameters: dict[str, Any], tokenizer=None) -> str:
    """The reply text the family's model writes to call ``name`` (``parse_reply``'s inverse)."""
    return _family(tokenizer).render_tool_call(name, parameters)


def combine_option(tokenizer, combine: bool | None) -> bool | None:
    """``data.combine`` for this family: its default when unset; an error where the family has no such option."""
    family = _family(tokenizer)
    if family.combine_default is None:
        if combine is not None:
            raise DataError(f"data.combine applies to GLM-4's format only, not to {family.title} "
                            "(fix: remove data.combine)")
        return None
    return family.combine_default if combine is None else combine


def encode_chat(conversation: Conversation, tokenizer, *, combine: bool | None = None,
                max_source: int | None = None, max_target: int | None = None) -> tuple[list[int], list[int]]:
    """Training ids and labels of a conversation in the family's official fine-tune format."""
    return _family(tokenizer).encode_chat(conversation, tokenizer, combine=combine_option(tokenizer, combine),
                                          max_source=max_source, max_target=max_target)


def encode_base(context: str, target: str, tokenizer, max_source: int | None = None,
                max_target: int | None = None) -> tuple[list[int], list[int]]:
    """A base-model sample (context, target) in the family's format."""
    return _family(tokenizer).encode_base(context, target, tokenizer, max_source, max_target)


def family_notes(conversation: Conversation, tokenizer) -> list[tuple[str, str, str]]:
    """(problem, fix, kind) of what the family's official code reads differently in this record."""
    notes = _family(tokenizer).notes
    return notes(conversation) if notes is not None else []


def family_cuts(tokenizer) -> bool:
    """Whether the family cuts prompt and answer separately (then ``encode_chat`` takes the budgets)."""
    return _family(tokenizer).piecewise_truncation


def template_version(tokenizer) -> str:
    """Cache key part: the family and the version of its encodings."""
    family = _family(tokenizer)
    return f"{family.name}:{family.template_version}"
