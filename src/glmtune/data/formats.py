"""Records of every common format -> :class:`Conversation` (or a located, fixable error).

Formats (plain registry :data:`FORMATS`): ``chatglm3`` (official multi-turn
with tools), ``alpaca``, ``base`` (context/target, prompt/response),
``openai`` (messages with tool_calls), ``sharegpt`` (from/value, LLaMA-Factory
roles), ``columns`` (any columns mapped to system/user/assistant or
context/target). Tool calls of all formats become the same messages.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from .errors import Problem, record_error
from .messages import Conversation, Message, ToolCall
from .chat_format import observation_text


class _Ctx:
    """Where a record is (for error messages), what it is read for, and the warnings found on the way."""

    def __init__(self, file: str, line: int | None, fmt: str, prompt: bool = False):
        self.file, self.line, self.fmt, self.prompt = file, line, fmt, prompt
        self.warnings: list[Problem] = []

    def error(self, problem: str, expected: str = "", fix: str = "", kind: str = "invalid"):
        return record_error(self.file, self.line, f"[{self.fmt}] {problem}", expected, fix, kind)

    def warn(self, problem: str, fix: str, kind: str) -> None:
        self.warnings.append(Problem(self.file, self.line, f"[{self.fmt}] {problem}", "", fix, kind, warning=True))


def _structured(value: Any) -> Any:
    """CSV/parquet cells hold nested data as JSON text; decode it when it looks like JSON."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _field(rec: dict, key: str, ctx: _Ctx, types: type | tuple = str, where: str = "",
           required: bool = True, default: Any = None) -> Any:
    if key not in rec or rec[key] is None:
        if required:
            raise ctx.error(f"missing required field {key!r}{where}", f"a {key!r} field",
                            f"add {key!r} or choose the right --format / column mapping", "missing_field")
        return default
    value = rec[key] if types is str else _structured(rec[key])
    if not isinstance(value, types) or isinstance(value, bool) and bool not in _astuple(types):
        tname = "/".join(t.__name__ for t in _astuple(types))
        raise ctx.error(f"field {key!r}{where} is {type(value).__name__}", f"{tname}",
                        f"make {key!r} a {tname}", "wrong_type")
    return value


def _astuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _loss(msg: dict, ctx: _Ctx, where: str) -> bool | None:
    return _field(msg, "loss", ctx, bool, where, required=False)


def _tool_call(name: Any, params: Any, ctx: _Ctx, where: str) -> ToolCall:
    if not isinstance(name, str) or not name.strip():
        raise ctx.error(f"tool call{where} has no 'name'", "the called tool's name as a string",
                        "add \"name\": \"<tool>\" to the tool call", "tool_without_name")
    params = _structured(params) if params is not None else {}
    if not isinstance(params, dict):
        raise ctx.error(f"tool call {name!r}{where}: parameters are {type(params).__name__}",
                        "an object of keyword arguments", "write the parameters as a JSON object", "wrong_type")
    bad = [k for k in params if not (isinstance(k, str) and k.isidentifier())]
    if bad:
        raise ctx.error(f"tool call {name!r}{where}: parameter names {bad} are not Python identifiers",
                        "names usable in tool_call(k=v)", "rename them (ChatGLM3 renders calls as Python)",
                        "bad_tool_call")
    return ToolCall(name.strip(), params)


def _tools(rec: dict, ctx: _Ctx, where: str = "") -> list | None:
    """A ``tools`` list: each tool an object (JSON schema) or a string (the official demo allows both)."""
    tools = _field(rec, "tools", ctx, list, where, required=False)
    for j, tool in enumerate(tools or []):
        if not isinstance(tool, (dict, str)):
            raise ctx.error(f"tools[{j}]{where} is {type(tool).__name__} {json.dumps(tool)[:40]}",
                            "each tool an object (name, description, parameters) or a text description",
                            "write the tool definitions as objects", "wrong_type")
    return tools


def _observation(value: Any) -> str:
    return observation_text(value)


def _turns(items: list, key: str, ctx: _Ctx, role_key: str, roles, hint: str):
    """(index, message, role, where) of a message list, each checked to be an object with a known role.

    ``roles`` is a collection of valid role names, or a dict mapping them to
    internal roles (the mapped role is yielded).
    """
    shape = "{\"role\": ..., \"content\": ...}" if role_key == "role" else "{\"from\": ..., \"value\": ...}"
    for i, msg in enumerate(items):
        where = f" in {key}[{i}]"
        if not isinstance(msg, dict):
            raise ctx.error(f"{key}[{i}] is {type(msg).__name__}", f"an object with '{role_key}'",
                            f"write each message as {shape}", "wrong_type")
        name = _field(msg, role_key, ctx, str, where)
        if name not in roles:
            raise ctx.error(f"unknown role {name!r}{where}", f"one of {', '.join(roles)}", hint, "unknown_role")
        yield i, msg, (roles[name] if isinstance(roles, dict) else name), where


# -- chatglm3 -------------------------------------------------------------------
_CHATGLM3_ROLES = ("system", "user", "assistant", "tool", "observation")


def from_chatglm3(rec: dict, ctx: _Ctx) -> Conversation:
    """The official fine-tune demo's format (``format_conversation``); see :func:`_chatglm3_message` for where
    glmtune deliberately differs (each difference is a warning of ``glmtune data check``)."""
    conv = _field(rec, "conversations", ctx, list)
    tools = _tools(rec, ctx)
    if "tools" in rec and rec["tools"] is None:
        ctx.warn("'tools' is null: no tools prompt is rendered (the official demo renders the tools prompt with "
                 "the text 'null')", "remove the key, or give the tool list", "differs_tools_null")
    messages: list[Message] = []
    for i, msg, role, where in _turns(conv, "conversations", ctx, "role", _CHATGLM3_ROLES,
                                      "rename the role (e.g. human -> user, gpt -> assistant)"):
        if role != "tool":
            messages.append(_chatglm3_message(msg, role, ctx, where))
            continue
        call = _tool_call(msg.get("name"), msg.get("parameters"), ctx, where)
        messages.append(Message("assistant", loss=_loss(msg, ctx, where), tool_call=call))
        if "observation" in msg:  # an explicit null renders "null", as in the official demo
            messages.append(Message("observation", _observation(msg["observation"])))
        elif i != len(conv) - 1:
            raise ctx.error(f"tool message{where} has no 'observation'", "the tool's result in 'observation'",
                            "add the tool output, or end the conversation with the call (the official demo "
                            "would render the observation 'null' here)", "missing_field")
        # A trailing call without observation: encode_chat adds the official "null" observation.
    # An empty list is kept: the official demo renders the tools prompt with "[]".
    return Conversation(messages, tools=tools)


def _chatglm3_message(msg: dict, role: str, ctx: _Ctx, where: str) -> Message:
    content = _field(msg, "content", ctx, str, where)
    loss = _loss(msg, ctx, where)
    tools = _tools(msg, ctx, where)
    metadata = _field(msg, "metadata", ctx, str, where, False, "")
    if tools is not None:
        ctx.warn(f"'tools' on the {role} message{where} are rendered after its content, as in inference (the "
                 "official demo drops them)", "move them to the record's 'tools' to match the official demo",
                 "differs_message_tools")
    if metadata:
        ctx.warn(f"metadata {metadata[:30]!r}{where} is rendered after <|{role}|> (the official demo drops it)",
                 "remove 'metadata' to match the official demo", "differs_metadata")
    if role == "observation" and loss is None:
        ctx.warn(f"observation{where} is not learned (the official demo learns an observation message)",
                 "add \"loss\": true to learn it as the official demo does", "differs_observation_loss")
    return Message(role, content, loss=loss, tools=tools, metadata=metadata)


def _history(rec: dict, ctx: _Ctx) -> list[Message]:
    """A ``history`` of [query, answer] pairs (alpaca, ChatGLM2's prompt/response/history) as messages."""
    messages = []
    for i, pair in enumerate(_field(rec, "history", ctx, list, required=False, default=[])):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ctx.error(f"history[{i}] is {json.dumps(pair, ensure_ascii=False)[:60]}",
                            "a [query, answer] pair of strings", "write history as [[query, answer], ...]",
                            "wrong_type")
        messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    return messages


# -- alpaca ---------------------------------------------------------------------
def from_alpaca(rec: dict, ctx: _Ctx) -> Conversation:
    instruction = _field(rec, "instruction", ctx)
    extra = _field(rec, "input", ctx, required=False, default="")
    output = _field(rec, "output", ctx)
    system = _field(rec, "system", ctx, required=False, default="")
    messages = ([Message("system", system)] if system else []) + _history(rec, ctx)
    query = f"{instruction}\n{extra}" if extra else instruction
    messages += [Message("user", query), Message("assistant", output)]
    return Conversation(messages)


# -- base -----------------------------------------------------------------------
def from_base(rec: dict, ctx: _Ctx) -> Conversation:
    """context/target, or prompt/response with an optional ``history`` (ChatGLM2's P-Tuning data).

    A non-empty history makes the record a chat (its pairs, then prompt and response); a generation
    prompt (``ctx.prompt``) needs no response, as ChatGLM2's ``{"prompt", "history"}`` inputs have none.
    """
    keys = ("context", "target") if "context" in rec or "target" in rec else ("prompt", "response")
    context = _field(rec, keys[0], ctx)
    target = _field(rec, keys[1], ctx, required=not ctx.prompt)
    answer = [] if target is None else [Message("assistant", target)]
    history = _history(rec, ctx) if keys[0] == "prompt" else []
    if history:
        return Conversation(history + [Message("user", context)] + answer)
    return Conversation([Message("user", context)] + answer, kind="base")


# -- openai ---------------------------------------------------------------------
# "observation" and a system message's "tools"/"metadata": GLM-4's official fine-tune data, OpenAI-shaped.
_OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool", "function", "observation")


def _openai_content(msg: dict, ctx: _Ctx, where: str, required: bool) -> str:
    content = msg.get("content")
    if content is None:
        if required:
            raise ctx.error(f"missing required field 'content'{where}", "a 'content' string",
                            "add the message text", "missing_field")
        return ""
    if isinstance(content, list):  # content parts
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
            raise ctx.error(f"content{where} has non-text parts", "text parts only",
                            "remove images/audio parts (ChatGLM3 is text-only)", "wrong_type")
        return "".join(texts)
    if not isinstance(content, str):
        raise ctx.error(f"field 'content'{where} is {type(content).__name__}", "str",
                        "make 'content' a string", "wrong_type")
    return content


def _openai_calls(msg: dict, ctx: _Ctx, where: str) -> list[tuple[str | None, ToolCall]]:
    calls = msg.get("tool_calls") or ([{"function": msg["function_call"]}] if msg.get("function_call") else [])
    if not isinstance(calls, list):
        raise ctx.error(f"tool_calls{where} is {type(calls).__name__}", "a list", "wrap the call in a list",
                        "wrong_type")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise ctx.error(f"tool_calls[{j}]{where} has no 'function' object",
                            '{"function": {"name": ..., "arguments": ...}}', "fix the tool call", "bad_tool_call")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                raise ctx.error(f"tool_calls[{j}]{where}: arguments are not valid JSON ({exc.msg})",
                                "a JSON object string", "fix the arguments JSON", "bad_tool_call") from None
        out.append((call.get("id"), _tool_call(fn.get("name"), args, ctx, f" (tool_calls[{j}]){where}")))
    return out


def from_openai(rec: dict, ctx: _Ctx) -> Conversation:
    raw = _field(rec, "messages", ctx, list)
    messages: list[Message] = []
    pending: list[tuple[str | None, ToolCall, bool | None]] = []  # calls waiting for their results
    for i, msg, role, where in _turns(raw, "messages", ctx, "role", _OPENAI_ROLES, "rename the role"):
        if role in ("tool", "function"):
            result = _openai_content(msg, ctx, where, True)
            idx = next((k for k, p in enumerate(pending) if p[0] and p[0] == msg.get("tool_call_id")), 0)
            if pending:
                _, call, loss = pending.pop(idx)
                messages.append(Message("assistant", loss=loss, tool_call=call))
            elif not messages or messages[-1].tool_call is None:
                raise ctx.error(f"tool result{where} follows no tool call", "an assistant message with tool_calls "
                                "before it", "add the call or remove the result", "bad_tool_call")
            messages.append(Message("observation", result))
            continue
        messages += [Message("assistant", loss=p[2], tool_call=p[1]) for p in pending]
        pending = []
        loss = _loss(msg, ctx, where)
        calls = _openai_calls(msg, ctx, where) if role == "assistant" else []
        tools = _tools(msg, ctx, where) if role in ("system", "developer") else None
        content = _openai_content(msg, ctx, where, not calls and tools is None)
        if content or tools is not None or not calls:
            messages.append(Message("system" if role == "developer" else role, content, loss=loss,
                                    tools=_openai_tools(tools) if tools is not None else None,
                                    metadata=_field(msg, "metadata", ctx, str, where, False, "")))
        pending = [(cid, call, loss) for cid, call in calls]
    messages += [Message("assistant", loss=p[2], tool_call=p[1]) for p in pending]
    tools = _tools(rec, ctx)
    return Conversation(messages, tools=_openai_tools(tools) if tools else None)


def openai_conversation(messages: list, tools: list | None = None, where: str = "request") -> Conversation:
    """An OpenAI ``messages`` list (+ ``tools``) as a conversation, for chat requests.

    Only the format is checked: unlike a training record it needs no assistant
    message. Problems raise :class:`~glmtune.data.errors.DataError` located at ``where``.
    """
    record: dict = {"messages": messages}
    if tools:
        record["tools"] = tools
    return from_openai(record, _Ctx(where, None, "openai", prompt=True))


def _openai_tools(tools: list) -> list:
    """OpenAI wraps each tool as {"type": "function", "function": {...}}; ChatGLM3 lists the functions."""
    return [t["function"] if isinstance(t, dict) and isinstance(t.get("function"), dict) else t for t in tools]


# -- sharegpt -------------------------------------------------------------------
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "function_call": "call", "observation": "observation",
                   "tool": "observation", "function": "observation"}


def from_sharegpt(rec: dict, ctx: _Ctx) -> Conversation:
    key = "conversations" if "conversations" in rec else "messages"
    conv = _field(rec, key, ctx, list)
    system = _field(rec, "system", ctx, required=False, default="")
    tools = _tools(rec, ctx)
    messages = [Message("system", system)] if system else []
    for i, msg, role, where in _turns(conv, key, ctx, "from", _SHAREGPT_ROLES, "rename the 'from' value"):
        value = _field(msg, "value", ctx, str, where)
        if role == "call":
            call = _structured(value)
            if not isinstance(call, dict):
                raise ctx.error(f"function_call{where} is not a JSON object", '{"name": ..., "arguments": {...}}',
                                "write the call as JSON", "bad_tool_call")
            args = call.get("arguments", call.get("parameters"))
            messages.append(Message("assistant", loss=_loss(msg, ctx, where),
                                    tool_call=_tool_call(call.get("name"), args, ctx, where)))
        else:
            messages.append(Message(role, value, loss=_loss(msg, ctx, where)))
    return Conversation(messages, tools=_openai_tools(tools) if tools else None)


# -- columns --------------------------------------------------------------------
def from_columns(rec: dict, ctx: _Ctx) -> Conversation:
    if "context" in rec or "target" in rec:
        return from_base(rec, ctx)
    system = _field(rec, "system", ctx, required=False, default="")
    user = _field(rec, "user", ctx)
    assistant = _field(rec, "assistant", ctx)
    messages = [Message("system", system)] if system else []
    return Conversation(messages + [Message("user", user), Message("assistant", assistant)])


# Plain registry: format name -> converter.
FORMATS: dict[str, Callable[[dict, _Ctx], Conversation]] = {
    "chatglm3": from_chatglm3,
    "alpaca": from_alpaca,
    "base": from_base,
    "openai": from_openai,
    "sharegpt": from_sharegpt,
    "columns": from_columns,
}
