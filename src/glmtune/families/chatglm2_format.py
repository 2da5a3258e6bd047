"""The ChatGLM2-6B formats: the ``[Round N]`` prompt, THUDM's P-Tuning preprocessing, ``process_response``.

Reproduces, checked against ``fixtures/chatglm2-encodings.jsonl``:

* ``tokenizer.build_prompt(query, history)``: per past turn ``[Round i]\\n\\n问：{q}\\n\\n答：{a}\\n\\n``,
  then ``[Round n]\\n\\n问：{query}\\n\\n答：``, encoded as ONE text after ``[gMASK] sop``;
* ``ptuning/main.py`` ``preprocess_function_train``: a = prompt ids (specials included) cut to
  ``max_source_length``, b = answer ids cut to ``max_target_length``, ids a + b + eos, labels -100 on a
  then b + eos (no one-token shift; the official right padding is the collator's business here);
* ``model.process_response``: the reply stripped, ``[[训练时间]]`` replaced by ``2023年``.

ChatGLM2 has no role tokens, no system prompt and no tools: such messages are refused with an error
naming the record (an empty system message carries nothing and is skipped). Multi-turn records keep
the official meaning: earlier turns are the ``history`` (never learned), the last answer is learned.
"""

from __future__ import annotations

from typing import Iterable

from ..data.chat_format import IGNORE_INDEX
from ..data.errors import DataError, record_error
from ..data.messages import Conversation, Message, ToolCall
from .base import FamilyError

TEMPLATE_VERSION = "chatglm2-1"
TITLE = "ChatGLM2-6B"
_FIX_SYSTEM = "remove the system message, or put its text into the first user message"


def build_prompt_text(query: str, history: list[tuple[str, str]]) -> str:
    """The official ``tokenizer.build_prompt``: rounds numbered from 1."""
    prompt = "".join(f"[Round {i}]\n\n问：{q}\n\n答：{a}\n\n" for i, (q, a) in enumerate(history, 1))
    return prompt + f"[Round {len(history) + 1}]\n\n问：{query}\n\n答："


def _fail(conv: Conversation | None, problem: str, expected: str, fix: str, kind: str) -> DataError:
    if conv is not None and conv.source:
        return record_error(conv.source, conv.line, f"[chatglm2] {problem}", expected, fix, kind)
    return DataError(f"{problem} (expected {expected}; fix: {fix})")


def _message(item: Message | dict) -> Message:
    if isinstance(item, Message):
        return item
    if not isinstance(item, dict) or "role" not in item:
        raise DataError(f"history item {item!r}: expected a Message or a dict with 'role' and 'content'")
    if item.get("tool_calls") or item.get("function_call"):
        raise DataError(f"{TITLE} has no tool calls; message {str(item)[:60]} cannot be expressed "
                        "(fix: remove the tool call)")
    return Message(role=item["role"], content=item.get("content", "") or "", tools=item.get("tools"))


def _check(conv: Conversation | None, messages: list[Message], tools) -> list[Message]:
    """The user/assistant messages, or an error naming what ChatGLM2 cannot express."""
    if tools is not None:
        raise _fail(conv, f"{TITLE}'s format has no tools", "user and assistant messages only",
                    "remove the tools, or use a model family with tools (chatglm3, glm4)", "no_tools_in_family")
    out = []
    for i, m in enumerate(messages):
        if m.tool_call is not None or m.tools is not None or m.role == "observation":
            raise _fail(conv, f"message {i} ({m.role}) is a tool call, tool list or tool result: {TITLE} has no "
                        "tools", "user and assistant messages only", "remove the tool turns", "no_tools_in_family")
        if m.role == "system":
            if m.content.strip():
                raise _fail(conv, f"message {i} is a system message: {TITLE}'s format has no system prompt",
                            "user and assistant messages only", _FIX_SYSTEM, "no_system_in_family")
            continue  # an empty system message carries nothing
        if m.role not in ("user", "assistant"):
            raise _fail(conv, f"message {i} has role {m.role!r}", "user or assistant", "rename the role",
                        "unknown_role")
        out.append(m)
    return out


def _rounds(conv: Conversation | None, messages: list[Message]) -> tuple[list[tuple[str, str]], str]:
    """(history pairs, query) of messages alternating user, assistant, ..., user."""
    pairs, query = [], None
    for i, m in enumerate(messages):
        if (m.role == "user") != (query is None):
            raise _fail(conv, f"message {i} ({m.role}) breaks the user/assistant alternation",
                        f"{TITLE}'s rounds: user, assistant, user, ... (its history is [query, answer] pairs)",
                        "merge consecutive messages of the same role", "bad_turn_order")
        if m.role == "user":
            query = m.content
        else:
            pairs.append((query, m.content))
            query = None
    if query is None:
        raise _fail(conv, "the conversation does not end with a user message", "a user message to answer",
                    "add the user's message", "no_user_message")
    return pairs, query


def _prompt_ids(tokenizer, query: str, history: list[tuple[str, str]]) -> list[int]:
    return tokenizer.prefix_ids() + tokenizer.encode(build_prompt_text(query, history))


def build_prompt(messages: Conversation | Iterable[Message | dict], tokenizer) -> list[int]:
    """Generation prompt ids (``model.chat``'s input): ``[gMASK] sop`` + the ``[Round N]`` text ending in ``答：``."""
    conv = messages if isinstance(messages, Conversation) else None
    if conv is not None:
        items = list(conv.messages[:1] if conv.kind == "base" else conv.messages)
        tools = None if conv.kind == "base" else conv.tools
    else:
        items, tools = [_message(m) for m in messages], None
    pairs, query = _rounds(conv, _check(conv, items, tools))
    return _prompt_ids(tokenizer, query, pairs)


def _sample(tokenizer, query: str, history, answer: str, max_source, max_target) -> tuple[list[int], list[int]]:
    """``preprocess_function_train`` without its padding."""
    a = _prompt_ids(tokenizer, query, history)
    b = tokenizer.encode(answer)
    if max_source is not None:
        a = a[:max_source]
    if max_target is not None:
        b = b[:max_target]
    eos = tokenizer.eos_token_id
    return a + b + [eos], [IGNORE_INDEX] * len(a) + b + [eos]


def encode_chat(conversation: Conversation, tokenizer, *, combine=None, max_source: int | None = None,
                max_target: int | None = None) -> tuple[list[int], list[int]]:
    """Training ids and labels: the last answer after the prompt of everything before it (official P-Tuning)."""
    if conversation.kind == "base":
        user, assistant = conversation.messages
        return encode_base(user.content, assistant.content, tokenizer, max_source, max_target)
    messages = _check(conversation, list(conversation.messages), conversation.tools)
    if not messages or messages[-1].role != "assistant":
        raise _fail(conversation, "the conversation does not end with the assistant's answer",
                    f"{TITLE} learns the last answer of each record", "add the answer, or remove the record",
                    "no_trainable")
    pairs, query = _rounds(conversation, messages[:-1])
    return _sample(tokenizer, query, pairs, messages[-1].content, max_source, max_target)


def encode_base(context: str, target: str, tokenizer, max_source: int | None = None,
                max_target: int | None = None) -> tuple[list[int], list[int]]:
    """A prompt/response (or context/target) record: ChatGLM2 has no base model, so it is round 1 of a chat,
    exactly as the official P-Tuning reads AdvertiseGen's ``content``/``summary``."""
    return _sample(tokenizer, context, [], target, max_source, max_target)


def parse_reply(text: str) -> tuple[str, ToolCall | None]:
    """The official ``process_response``; ChatGLM2 never calls tools."""
    return text.strip().replace("[[训练时间]]", "2023年"), None


def render_tool_call(name: str, parameters: dict) -> str:
    raise FamilyError(f"{TITLE} has no tool calls (asked to render a call of {name!r}); use a model family with "
                      "tools (chatglm3, glm4)")


def _template_lines() -> list[str]:
    """The ``[Round N]`` prompt as Jinja (tags joined without newlines: trim_blocks-proof)."""
    return [
        "[gMASK]sop",
        "{%- if tools -%}{{ raise_exception('ChatGLM2-6B has no tools') }}{%- endif -%}",
        "{%- set ns = namespace(round=0) -%}",
        "{%- for m in messages -%}",
        "{%- set content = m.content if m.content is string else (m.content or [])|map(attribute='text')|join -%}",
        "{%- if m.role == 'user' -%}",
        "{%- set ns.round = ns.round + 1 -%}",
        "{{ ('\\n\\n' if ns.round > 1 else '') ~ '[Round ' ~ ns.round ~ ']\\n\\n问：' ~ content ~ '\\n\\n答：' }}",
        "{%- elif m.role == 'assistant' -%}{{ content }}",
        "{%- elif m.role == 'system' and not content -%}",
        "{%- else -%}{{ raise_exception('ChatGLM2-6B has no ' ~ m.role ~ ' messages') }}",
        "{%- endif -%}",
        "{%- endfor -%}",
    ]


CHAT_TEMPLATE = "".join(_template_lines())
"""Exports' chat template: ``apply_chat_template(messages)`` gives :func:`build_prompt`'s ids."""
