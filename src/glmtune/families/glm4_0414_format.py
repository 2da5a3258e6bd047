"""GLM-4-0414 formats, rendered by the folder's own chat template; training as THUDM's GLM-4 ``finetune.py``.

The official fine-tune guidance for GLM-4-9B/32B-0414 is THUDM/GLM-4's ``finetune/finetune.py`` (its
README runs it on ``THUDM/GLM-4-9B-0414``): the same ``process_batch`` as for GLM-4-9B, with the
model's own template:

* ``combine`` (True in every config the repo ships, glmtune's default): the whole conversation through
  ``apply_chat_template``, loss on what follows the LAST ``<|assistant|>``;
* ``combine: false``: ``[gMASK] <sop>`` + ``apply_chat_template([message])[2:]`` per message, loss on
  assistant messages;
* either way labels are shifted one token (the ``<|assistant|>`` token is not learned, the token after
  the answer is) and ``<|user|>`` is appended as the "EOS for chat"; the caller cuts the sample to
  ``max_input_length + max_output_length + 1``.

Generation prompts are ``apply_chat_template(messages, add_generation_prompt=True)``. glmtune's model
maps on as for GLM-4: a tool call is an assistant message with ``metadata`` = the tool name and content
= JSON arguments (the template's ``<|assistant|>{meta}`` branch), a tool result an ``observation``
message; tool definitions (the record's, or a system message's) go to the template's ``tools`` argument,
which renders its own tools system block. (The official script leaves a system message's ``tools`` on
the message, where the 0414 template does not read them: glmtune renders them instead.) Special-token
names inside message text are read as tokens, as transformers does with the official template.
LLaMA-Factory's ``glm4`` template (learning each answer without the shift, ``<|endoftext|>`` as eos) is
not what THUDM trains with and is not used.
"""

from __future__ import annotations

import json
from typing import Iterable

from ..data.chat_format import encode_base
from ..data.errors import DataError, record_error
from ..data.messages import Conversation, Message
from ..tokenizer import TokenizerError
from . import glm4_format

TEMPLATE_VERSION = "glm4-0414-1"
IGNORE_INDEX = -100
parse_reply = glm4_format.parse_reply
render_tool_call = glm4_format.render_tool_call


def _message_dict(message: Message) -> dict:
    if message.tool_call is not None:
        call = message.tool_call
        return {"role": "assistant", "metadata": call.name, "content": json.dumps(call.parameters, ensure_ascii=False)}
    out = {"role": message.role, "content": message.content or ""}
    if message.metadata:
        out["metadata"] = message.metadata
    return out


def _of_dict(item: Message | dict) -> Message:
    if isinstance(item, Message):
        return item
    if not isinstance(item, dict) or not isinstance(item.get("role"), str):
        raise DataError(f"history item {str(item)[:60]!r}: expected a Message or a dict with 'role' and 'content'")
    return Message(item["role"], item.get("content") or "", tools=item.get("tools"), metadata=item.get("metadata") or "")


def template_input(messages: list[Message], tools: list | None) -> tuple[list[dict], list | None]:
    """(message dicts, tools) for the template: a system message's tools join the record's."""
    found = list(tools or [])
    for m in messages:
        if m.role == "system" and m.tools:
            found += list(m.tools)
    return [_message_dict(m) for m in messages], (found or None)


def _render(tokenizer, messages: list[dict], tools, conv: Conversation | None, **kwargs) -> list[int]:
    try:
        return tokenizer.render_ids(messages, tools=tools, **kwargs)
    except TokenizerError as exc:
        if conv is not None and conv.source:
            raise record_error(conv.source, conv.line, f"[glm4-0414] {exc}", "", "fix the record or the folder's "
                               "chat template", "template_error") from None
        raise


def _message_ids(tokenizer, message: dict, conv: Conversation) -> list[int]:
    """``apply_chat_template([message])[2:]``: the template's ``[gMASK]<sop>`` dropped."""
    ids = _render(tokenizer, [message], None, conv)
    prefix = tokenizer.prefix_ids()
    if ids[:len(prefix)] != prefix:
        raise TokenizerError(f"{tokenizer.folder}: the chat template does not start with [gMASK]<sop>; it is not "
                             "GLM-4-0414's (set model.family to the right family)")
    return ids[len(prefix):]


def _tools_block(tokenizer, tools: list, conv: Conversation) -> list[int]:
    """The ids the template puts between ``[gMASK]<sop>`` and the messages for ``tools`` (it renders no empty list)."""
    probe = [{"role": "user", "content": ""}]
    with_tools, without = _render(tokenizer, probe, tools, conv), _render(tokenizer, probe, None, conv)
    n, tail = len(tokenizer.prefix_ids()), len(without) - len(tokenizer.prefix_ids())
    if with_tools[:n] != without[:n] or with_tools[len(with_tools) - tail:] != without[n:]:
        raise TokenizerError(f"{tokenizer.folder}: the chat template does not render its tools right after "
                             "[gMASK]<sop>; cannot train per message (combine: false) with tools on this template")
    return with_tools[n:len(with_tools) - tail]


def encode_chat(conversation: Conversation, tokenizer, *, combine: bool | None = None, max_source=None,
                max_target=None) -> tuple[list[int], list[int]]:
    """Ids and labels as ``process_batch`` builds them (untruncated; see the module docstring)."""
    if conversation.kind == "base":
        user, assistant = conversation.messages
        return encode_base(user.content, assistant.content, tokenizer, max_source, max_target)
    messages, tools = template_input(list(conversation.messages), conversation.tools)
    if combine is None or combine:
        input_ids = _render(tokenizer, messages, tools, conversation)
        assistant = tokenizer.role_id("assistant")
        last = max((i for i, t in enumerate(input_ids) if t == assistant), default=len(input_ids))
        mask = [i > last for i in range(len(input_ids))]
    else:
        input_ids, mask = tokenizer.prefix_ids(), [False, False]
        if tools:
            block = _tools_block(tokenizer, tools, conversation)
            input_ids, mask = input_ids + block, mask + [False] * len(block)
        for message in messages:
            ids = _message_ids(tokenizer, message, conversation)
            input_ids += ids
            mask += [message["role"] == "assistant"] * len(ids)
    input_ids.append(tokenizer.role_id("user"))  # the script's "EOS for chat"
    mask = [False, *mask]
    return input_ids, [t if learned else IGNORE_INDEX for t, learned in zip(input_ids, mask)]


def build_prompt(messages: Conversation | Iterable[Message | dict], tokenizer) -> list[int]:
    """``apply_chat_template(messages, tools=..., add_generation_prompt=True)`` with the folder's template."""
    conv = messages if isinstance(messages, Conversation) else None
    if conv is not None and conv.kind == "base":
        return tokenizer.prefix_ids() + tokenizer.encode(conv.messages[0].content)
    items = list(conv.messages) if conv is not None else [_of_dict(m) for m in messages]
    dicts, tools = template_input(items, conv.tools if conv is not None else None)
    return _render(tokenizer, dicts, tools, conv, add_generation_prompt=True)
