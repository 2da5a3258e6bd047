"""The GLM-4 token format: conversations -> ids/labels (THUDM GLM-4 ``finetune.py``), prompts, tool calls.

Reproduces the official chat template (``tokenizer_config.json``, rendered by transformers) and the
fine-tune script's ``process_batch`` token for token (``fixtures/glm4-encodings.jsonl``):

* a message renders as ``<|role|>`` + one text ``metadata + "\\n" + content`` (the text between two
  special tokens is tokenized as one string); a message with empty content renders nothing;
* a system message carrying ``tools`` first renders the tools block (GLM-4's system prompt, then per
  function ``## name`` and its JSON);
* ``combine`` (the default, as in every config the GLM-4 repo ships) learns only what follows the last
  ``<|assistant|>`` token; without it every assistant message is learned. Either way labels are shifted
  by one token and ``<|user|>`` (151336) is appended.

glmtune's model maps on as follows: a :class:`ToolCall` is an assistant message whose metadata is the
tool name and whose content is the JSON arguments; conversation-level ``tools`` become a first system
message carrying them. Deliberate difference: special-token names inside message text stay plain text
(the official template would read them as tokens, letting data forge role tokens). Bump
:data:`TEMPLATE_VERSION` whenever anything here changes the ids.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from ..data.chat_format import encode_base
from ..data.errors import DataError
from ..data.messages import Conversation, Message, ToolCall

TEMPLATE_VERSION = "glm4-1"
IGNORE_INDEX = -100
SYSTEM_PROMPT = ("你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
                 "你的任务是针对用户的问题和要求提供适当的答复和支持。")
TOOLS_HEADER = "\n\n# 可用工具"
FUNCTION_FOOTER = "\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
_STOP_STRINGS = ("<|user|>", "<|observation|>", "<|endoftext|>")
_TOOL_NAME = re.compile(r"[^\W\d][\w.\-]*")

__all__ = ["build_prompt", "encode_base", "encode_chat", "parse_reply", "render_tool_call", "tools_block"]


@dataclass(frozen=True)
class Item:
    """One message as GLM-4's template sees it."""

    role: str
    metadata: str = ""
    content: str = ""
    tools: Any = None


# -- tools ------------------------------------------------------------------------------------
def _function(tool: Any) -> dict:
    """The ``function`` object of a tool: OpenAI's ``{"type": "function", "function": {...}}`` or a bare function."""
    if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        return tool["function"]
    if isinstance(tool, dict) and "type" not in tool and isinstance(tool.get("name"), str):
        return tool
    kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
    raise DataError(f"GLM-4 tool {json.dumps(tool, ensure_ascii=False)[:60]}: glmtune renders function tools only "
                    f"(got {kind!r}); write it as {{\"type\": \"function\", \"function\": {{\"name\": ..., "
                    "\"parameters\": ...}}")


def _without_null_properties(function: dict) -> dict:
    """finetune.py's ``process_message``: parameter properties that are null are left out."""
    params = function.get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    if not isinstance(props, dict) or all(v is not None for v in props.values()):
        return function
    return {**function, "parameters": {**params, "properties": {k: v for k, v in props.items() if v is not None}}}


_TOOLS_TEXT: dict[tuple[str, bool], str] = {}


def tools_block(tools: list, drop_null: bool = False) -> str:
    """The text after ``<|system|>`` that lists ``tools`` (memoised: data sets repeat one tool list)."""
    key = (json.dumps(tools, ensure_ascii=False), drop_null)
    text = _TOOLS_TEXT.get(key)
    if text is None:
        parts = ["\n", SYSTEM_PROMPT, TOOLS_HEADER]
        for tool in tools:
            fn = _function(tool)
            fn = _without_null_properties(fn) if drop_null else fn
            # One "\n" before "##": the template's own newline there is eaten by trim_blocks.
            parts += [f"\n## {fn.get('name')}\n\n", json.dumps(fn, indent=4, ensure_ascii=False), FUNCTION_FOOTER]
        if len(_TOOLS_TEXT) > 1024:
            _TOOLS_TEXT.clear()
        text = _TOOLS_TEXT[key] = "".join(parts)
    return text


# -- glmtune messages -> template items ---------------------------------------------------------------
def render_tool_call(name: str, parameters: dict[str, Any]) -> str:
    """The reply text of a call (``name``, newline, JSON arguments); ``parse_reply`` gives the call back."""
    return f"{name}\n{json.dumps(parameters, ensure_ascii=False)}"


def _item(message: Message) -> Item:
    if message.tool_call is not None:
        call = message.tool_call
        return Item("assistant", call.name, json.dumps(call.parameters, ensure_ascii=False))
    # finetune.py deletes tools from any message but a system one.
    tools = message.tools if message.role == "system" else None
    return Item(message.role, message.metadata or "", message.content or "", tools)


def items_of(conversation: Conversation) -> list[Item]:
    """The conversation as template items; its ``tools`` become a first system message carrying them."""
    items = [Item("system", tools=conversation.tools)] if conversation.tools is not None else []
    return items + [_item(m) for m in conversation.messages]


def _item_of_dict(item: Message | dict) -> Item:
    if isinstance(item, Message):
        return _item(item)
    if not isinstance(item, dict) or not isinstance(item.get("role"), str):
        raise DataError(f"history item {str(item)[:60]!r}: expected a Message or a dict with 'role' and 'content'")
    tools = item.get("tools") if item["role"] == "system" else None
    return Item(item["role"], item.get("metadata") or "", item.get("content") or "", tools)


# -- ids ------------------------------------------------------------------------------------------------
def item_ids(item: Item, tokenizer, drop_null: bool = False) -> list[int]:
    """``apply_chat_template([message])[2:]``: the tools block (if any), then role + metadata/content (if content)."""
    ids: list[int] = []
    if item.tools is not None:
        ids += [tokenizer.role_id("system")] + tokenizer.encode(tools_block(item.tools, drop_null))
    if item.content:
        ids += [tokenizer.role_id(item.role)] + tokenizer.encode(f"{item.metadata}\n{item.content}")
    return ids


def encode_chat(conversation: Conversation, tokenizer, *, combine: bool | None = None, max_source=None,
                max_target=None) -> tuple[list[int], list[int]]:
    """Ids and labels of a conversation as ``process_batch`` builds them (untruncated; the caller cuts at
    ``max_input_length + max_output_length + 1``, as the script does).

    ``combine`` (None: True, the official configs' value) learns what follows the last ``<|assistant|>``;
    False learns every assistant message. A per-message ``loss`` is ignored, as officially.
    """
    if conversation.kind == "base":
        user, assistant = conversation.messages
        return encode_base(user.content, assistant.content, tokenizer, max_source, max_target)
    combine = True if combine is None else combine
    input_ids, mask = tokenizer.prefix_ids(), [False, False]
    for item in items_of(conversation):
        # process_message (null tool properties dropped) runs only without combine.
        ids = item_ids(item, tokenizer, drop_null=not combine)
        input_ids += ids
        mask += [item.role == "assistant"] * len(ids)
    if combine:
        assistant = tokenizer.role_id("assistant")
        last = max((i for i, t in enumerate(input_ids) if t == assistant), default=len(input_ids))
        mask = [i > last for i in range(len(input_ids))]
    input_ids.append(tokenizer.role_id("user"))  # the script's "EOS for chat"
    mask = [False, *mask]
    return input_ids, [t if learned else IGNORE_INDEX for t, learned in zip(input_ids, mask)]


def build_prompt(messages: Conversation | Iterable[Message | dict], tokenizer) -> list[int]:
    """The generation prompt: ``apply_chat_template(messages, add_generation_prompt=True)``.

    Accepts a :class:`Conversation` (its ``tools`` become the tools system message, as in training)
    or a list of messages / GLM-4 message dicts (``role``, ``content``, ``metadata``, ``tools`` on a
    system message). Ends with ``<|assistant|>`` (the model writes the newline or a tool name).
    """
    if isinstance(messages, Conversation):
        if messages.kind == "base":
            return tokenizer.prefix_ids() + tokenizer.encode(messages.messages[0].content)
        items = items_of(messages)
    else:
        items = [_item_of_dict(m) for m in messages]
    ids = tokenizer.prefix_ids()
    for item in items:
        ids += item_ids(item, tokenizer)
    return ids + [tokenizer.role_id("assistant")]


# -- parsing replies ------------------------------------------------------------------------------------
def parse_reply(text: str) -> tuple[str, ToolCall | None]:
    """Split a decoded reply into (content, tool call), as GLM-4's ``process_response``.

    A reply whose first line is a tool name (one word) and whose next line starts a JSON object is a call
    (``ToolCall(name, arguments)``, content: the JSON text); anything else is plain text, stripped.
    """
    text = text.split("<|assistant|>")[-1]
    for stop in _STOP_STRINGS:
        text = text.split(stop)[0]
    text = text.strip()
    name, _, rest = text.partition("\n")
    name, rest = name.strip(), rest.strip()
    # The official parser also requires a requested tool's name; without the request's tools, a name is at
    # least one word (so "Result:" followed by JSON stays an answer).
    if not _TOOL_NAME.fullmatch(name) or not rest.startswith("{"):
        return text, None
    try:
        arguments = json.loads(rest)
    except (json.JSONDecodeError, RecursionError):
        return text, None
    if not isinstance(arguments, dict):
        return text, None
    return rest, ToolCall(name, arguments)
