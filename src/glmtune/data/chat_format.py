"""The ChatGLM3 token format: conversations -> ids/labels, prompts, tool calls.

Reproduces THUDM's fine-tune demo (``process_batch`` with tools), the
tokenizer's ``build_single_message`` / ``build_chat_input`` and the model's
``process_response`` — checked token for token against
``fixtures/chatglm3-encodings.jsonl``. Bump :data:`TEMPLATE_VERSION` whenever
anything here changes the ids, so cached encodings are rebuilt.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Iterable

from .errors import DataError
from .messages import Conversation, Message, ToolCall

TEMPLATE_VERSION = "chatglm3-2"
IGNORE_INDEX = -100
TOOLS_PROMPT = "Answer the following questions as best as you can. You have access to the following tools:\n"
_FENCE_RE = re.compile(r"```[a-zA-Z]*[ \t]*\n(.*?)\n?```", re.DOTALL)
_STOP_STRINGS = ("<|user|>", "<|observation|>")


# -- rendering ------------------------------------------------------------
_TOOLS_JSON: dict[str, str] = {}


def tools_json(tools: Any) -> str:
    """``json.dumps(tools, indent=4, ensure_ascii=False)``, memoised.

    With ``indent`` the json module falls back to its pure-Python encoder,
    and data sets repeat the same tool list in every record; the compact
    dump (C encoder) is the memo key.
    """
    key = json.dumps(tools, ensure_ascii=False)
    text = _TOOLS_JSON.get(key)
    if text is None:
        if len(_TOOLS_JSON) > 1024:
            _TOOLS_JSON.clear()
        text = _TOOLS_JSON[key] = json.dumps(tools, indent=4, ensure_ascii=False)
    return text


def tool_call_body(parameters: dict[str, Any]) -> str:
    """Content of a tool-call turn: a fenced ``tool_call(k=v, ...)``, as the official demo writes it."""
    # ast.Constant + unparse is how the official format_function_call renders
    # values (repr-like, single quotes), so the ids match the demo's.
    keywords = [ast.keyword(arg=k, value=ast.Constant(v)) for k, v in parameters.items()]
    call = ast.unparse(ast.Call(func=ast.Name(id="tool_call"), args=[], keywords=keywords))
    return f"```python\n{call}\n```"


def render_tool_call(name: str, parameters: dict[str, Any]) -> str:
    """The text of a model reply calling ``name``: metadata line, then the fenced call.

    ``parse_reply(render_tool_call(n, p))`` gives back ``ToolCall(n, p)``.
    """
    return f"{name}\n{tool_call_body(parameters)}"


def observation_text(observation: Any) -> str:
    return observation if isinstance(observation, str) else json.dumps(observation, ensure_ascii=False)


def render_message(message: Message) -> tuple[str, str]:
    """(metadata, content) of a message as it is tokenized."""
    if message.tool_call is not None:
        return message.tool_call.name, tool_call_body(message.tool_call.parameters)
    content = message.content
    if message.role == "system" and message.tools is not None:
        content = content + "\n" + tools_json(message.tools)
    return message.metadata, content


def rendered_messages(conversation: Conversation) -> list[Message]:
    """The conversation's messages with conversation-level ``tools`` as a first system message.

    An empty tool list still renders the tools prompt (``[]``), as the official demo does.
    """
    if conversation.tools is None:
        return list(conversation.messages)
    system = Message("system", TOOLS_PROMPT + tools_json(conversation.tools))
    return [system, *conversation.messages]


class _Encoder:
    """Caches the ids of the short ``metadata + "\\n"`` strings, which repeat in every message."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._header: dict[tuple[str, str], list[int]] = {}
        self._system: dict[str, list[int]] = {}

    def header(self, role: str, metadata: str) -> list[int]:
        key = (role, metadata)
        ids = self._header.get(key)
        if ids is None:
            ids = [self.tokenizer.role_id(role)] + self.tokenizer.encode(f"{metadata}\n")
            self._header[key] = ids
        return ids

    def message(self, message: Message) -> list[int]:
        """``build_single_message``: role token + encode(metadata + "\\n") + encode(content)."""
        metadata, content = render_message(message)
        if message.role == "system" and len(content) > 200:
            # Tool definitions repeat across a data set; their long prompt is encoded once.
            ids = self._system.get(content)
            if ids is None:
                if len(self._system) > 256:
                    self._system.clear()
                ids = self._system[content] = self.tokenizer.encode(content)
            return self.header(message.role, metadata) + ids
        return self.header(message.role, metadata) + self.tokenizer.encode(content)


_ENCODERS: dict[int, _Encoder] = {}


def _encoder(tokenizer) -> _Encoder:
    enc = _ENCODERS.get(id(tokenizer))
    if enc is None or enc.tokenizer is not tokenizer:
        enc = _ENCODERS[id(tokenizer)] = _Encoder(tokenizer)
    return enc


# -- training samples ---------------------------------------------------------
def encode_chat(conversation: Conversation, tokenizer) -> tuple[list[int], list[int]]:
    """Ids and labels of a chat conversation, as the official multi-turn demo builds them.

    A learned message's tokens are masked in, and labels are shifted by one:
    token i is learned when token i-1 belongs to a learned message, so the
    role token of an answer is not learned but the token after it (next role
    token or the final eos) is.
    """
    if conversation.kind == "base":
        user, assistant = conversation.messages
        return encode_base(user.content, assistant.content, tokenizer)
    enc = _encoder(tokenizer)
    input_ids = tokenizer.prefix_ids()
    labels = [IGNORE_INDEX] * len(input_ids)
    prev_learned = False
    messages = rendered_messages(conversation)
    if messages and messages[-1].tool_call is not None:
        # The official demo renders a call's missing observation as json.dumps(None): the
        # <|observation|> after the call is learned (where generation stops), "null" is not.
        messages.append(Message("observation", observation_text(None)))
    # Built a message at a time (not token by token): the shifted mask means
    # a message's first token is learned iff the previous message is, and the
    # rest of its tokens iff it is itself learned.
    for message in messages:
        ids = enc.message(message)
        input_ids += ids
        labels.append(ids[0] if prev_learned else IGNORE_INDEX)
        prev_learned = message.learned
        labels += ids[1:] if prev_learned else [IGNORE_INDEX] * (len(ids) - 1)
    input_ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id if prev_learned else IGNORE_INDEX)
    return input_ids, labels


def encode_base(context: str, target: str, tokenizer, max_source: int | None = None,
                max_target: int | None = None) -> tuple[list[int], list[int]]:
    """Base-model sample: ``[gMASK] sop`` + context (``max_source`` tokens in all), target (``max_target``), eos."""
    source = tokenizer.prefix_ids() + tokenizer.encode(context)
    target_ids = tokenizer.encode(target)
    if max_source is not None:
        source = source[:max_source]
    if max_target is not None:
        target_ids = target_ids[:max_target]
    input_ids = source + target_ids + [tokenizer.eos_token_id]
    return input_ids, [IGNORE_INDEX] * len(source) + target_ids + [tokenizer.eos_token_id]


# -- generation prompts ---------------------------------------------------------
def _as_message(item: Message | dict) -> Message:
    if isinstance(item, Message):
        return item
    if not isinstance(item, dict) or "role" not in item:
        raise DataError(f"history item {item!r}: expected a Message or a dict with 'role' and 'content'")
    return Message(role=item["role"], content=item.get("content", "") or "", tools=item.get("tools"),
                   metadata=item.get("metadata", "") or "")


def build_prompt(messages: Conversation | Iterable[Message | dict], tokenizer) -> list[int]:
    """The generation prompt (official ``build_chat_input``): ``[gMASK] sop`` + messages + ``<|assistant|>``.

    Accepts a :class:`Conversation` (its ``tools`` become the tools system
    prompt, as in training), or a list of messages / ChatGLM3 history dicts
    (a system message may carry ``tools``; an assistant dict may carry
    ``metadata``). As in the official code, ``<|assistant|>`` is appended
    whatever the last role (a reply may continue after an assistant turn,
    e.g. a tool call following a remark), and nothing is left out: this is the
    one function that turns a conversation into generation prompt ids (chat,
    serve, eval, ``data encode --for-generation``). Nothing of training's
    checks applies: a first turn with no assistant message is a prompt.
    """
    if isinstance(messages, Conversation):
        if messages.kind == "base":
            return tokenizer.prefix_ids() + tokenizer.encode(messages.messages[0].content)
        items = rendered_messages(messages)
    else:
        items = [_as_message(m) for m in messages]
    enc = _encoder(tokenizer)
    ids = tokenizer.prefix_ids()
    for message in items:
        ids += enc.message(message)
    return ids + [tokenizer.role_id("assistant")]


def prompt_history(conversation: Conversation) -> Conversation:
    """A data record as a prompt history: the reference answer (trailing plain assistant turns) left out.

    A trailing tool call is kept: it is history, not an answer to generate.
    """
    messages = list(conversation.messages)
    while messages and messages[-1].role == "assistant" and messages[-1].tool_call is None:
        messages.pop()
    return Conversation(messages, tools=conversation.tools, kind=conversation.kind, source=conversation.source,
                        line=conversation.line)


# -- parsing replies -------------------------------------------------------------
def parse_tool_call_code(code: str) -> dict[str, Any] | None:
    """Keyword arguments of ``tool_call(k=v, ...)``, read with ``ast`` (never evaluated); None if not one."""
    try:
        node = ast.parse(code.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.Call) or node.args or not isinstance(node.func, ast.Name):
        return None
    params: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            return None
        try:
            params[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    return params


def parse_reply(text: str) -> tuple[str, ToolCall | None]:
    """Split a decoded reply into (content, tool call), as the official ``process_response``.

    The reply after the last ``<|assistant|>`` is a metadata line and a body.
    An empty metadata line means plain text (returned stripped). A metadata
    line naming a tool with a fenced ``tool_call(...)`` body gives
    ``ToolCall(name, parameters)`` (content: the body). A metadata line whose
    body is not such a call (e.g. code-interpreter code) gives the body and None.
    """
    text = text.split("<|assistant|>")[-1]
    for stop in _STOP_STRINGS:
        text = text.split(stop)[0]
    if "\n" not in text:
        return text.strip(), None
    metadata, body = text.split("\n", 1)
    if not metadata.strip():
        return body.strip(), None
    fenced = _FENCE_RE.search(body)
    params = parse_tool_call_code(fenced.group(1) if fenced else body)
    if params is None:
        return body.strip(), None
    return body.strip(), ToolCall(metadata.strip(), params)
