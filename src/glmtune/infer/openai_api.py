"""The OpenAI chat-completions protocol: request validation (400s naming the field) and reply JSON.

Transport-free, so the server (and its tests) share one definition of what a
request may hold. Options glmtune cannot honour are refused, never ignored.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import replace

from ..data.chat_format import rendered_messages
from ..data.errors import DataError
from ..data.formats import openai_conversation
from .chat import ChatError, Reply, check_text
from .sampling import SamplingConfig

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed


MAX_STOP = 16  # stop strings per request (OpenAI allows 4)


class RequestError(ValueError):
    """A request the server cannot serve; answered ``status`` (400 unless said) with an OpenAI error object."""

    def __init__(self, message: str, param: str | None = None, *, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.kind, self.code = param, status, kind, code

    def json(self) -> dict:
        return error_json(str(self), self.kind, self.param, self.code)


def error_json(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The body of every error reply, as OpenAI's API sends it (the openai client parses it)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _number(body: dict, key: str, kind, default, minimum: float | None = None, maximum: float | None = None):
    """``body[key]`` as a finite int/float within bounds (the default when absent or null); RequestError otherwise."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{key}' must be a number, got {json.dumps(value)}", key)
    if not math.isfinite(value) or (kind is int and value != int(value)):
        raise RequestError(f"'{key}' must be a finite {'integer' if kind is int else 'number'}, "
                           f"got {json.dumps(value)}", key)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise RequestError(f"'{key}' must be {bounds}, got {json.dumps(value)}", key)
    return kind(value)


def sampling_from_request(body: dict, defaults: SamplingConfig) -> SamplingConfig:
    if _number(body, "n", int, 1) != 1:
        raise RequestError("only n=1 is supported", "n")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    try:
        return SamplingConfig(
            max_new_tokens=_number(body, key, int, defaults.max_new_tokens, minimum=1),
            # 0 is greedy; a negative temperature is a mistake, not a request for greedy decoding.
            temperature=_number(body, "temperature", float, defaults.temperature, minimum=0),
            top_p=_number(body, "top_p", float, defaults.top_p),
            top_k=_number(body, "top_k", int, defaults.top_k, minimum=0),
            repetition_penalty=_repetition_penalty(body, defaults.repetition_penalty),
            seed=_number(body, "seed", int, defaults.seed, minimum=0, maximum=MAX_SEED))
    except RequestError:
        raise
    except ValueError as exc:  # SamplingConfig's own checks (top_p ...)
        raise RequestError(str(exc)) from None


def _repetition_penalty(body: dict, default: float) -> float:
    value = _number(body, "repetition_penalty", float, default)
    if value <= 0:
        raise RequestError(f"'repetition_penalty' must be > 0 (1 disables it), got {json.dumps(value)}",
                           "repetition_penalty")
    return value


def stop_strings(body: dict) -> list[str]:
    """The request's ``stop`` as a list (a reply ends before the first of them; tool calls are not cut)."""
    stop = body.get("stop")
    if stop is None:
        return []
    if not isinstance(stop, (str, list)) or (isinstance(stop, list) and not all(isinstance(s, str) for s in stop)):
        raise RequestError(f"'stop' must be a string or a list of strings, got {json.dumps(stop)}", "stop")
    stops = [stop] if isinstance(stop, str) else list(stop)
    if "" in stops:
        raise RequestError("'stop' strings must not be empty (an empty string would end every reply at once); "
                           "leave it out", "stop")
    if len(stops) > MAX_STOP:
        raise RequestError(f"'stop' holds {len(stops)} strings; at most {MAX_STOP} are accepted", "stop")
    return stops


def check_model(body: dict, name: str) -> None:
    """A request for another model is refused as OpenAI does (404 model_not_found); no model means this one."""
    model = body.get("model")
    if model is None or model == name:
        return
    if not isinstance(model, str):
        raise RequestError(f"'model' must be a string, got {json.dumps(model)}", "model")
    raise RequestError(f"The model `{model}` does not exist: this server serves `{name}` (see GET /v1/models)",
                       "model", status=404, code="model_not_found")


class StopText:
    """Cuts streamed text before the first stop string, holding back a tail that may begin one."""

    def __init__(self, stops: list[str]):
        self.stops, self.text, self.sent, self.hit = stops, "", 0, False

    def push(self, delta: str) -> str:
        """The text that may be shown now (empty once a stop string was found)."""
        if self.hit:
            return ""
        self.text += delta
        found = [i for i in (self.text.find(s, max(0, self.sent - len(s))) for s in self.stops) if i >= 0]
        if found:
            self.hit, self.text = True, self.text[:min(found)]
            return self._emit(len(self.text))
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._emit(len(self.text) - hold)

    def flush(self) -> str:
        """What was held back, once the reply has ended without a stop string."""
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        out, self.sent = self.text[self.sent:end], max(self.sent, end)
        return out


def tool_names(body: dict) -> list[str]:
    """The names of the request's tools (OpenAI ``{"type": "function", "function": {...}}`` or a bare schema)."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    specs = [t.get("function", t) if isinstance(t, dict) else None for t in tools]
    return [s["name"] for s in specs if isinstance(s, dict) and isinstance(s.get("name"), str)]


def forced_tool(body: dict) -> str | None:
    """The function a ``tool_choice`` object names (the reply must call it), or None."""
    choice = body.get("tool_choice")
    return choice["function"]["name"] if isinstance(choice, dict) else None


def _check_tool_choice(body: dict) -> None:
    choice = body.get("tool_choice")
    if choice is None:
        return
    named = (isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict)
             and isinstance(choice["function"].get("name"), str))
    if choice not in ("none", "auto", "required") and not named:
        raise RequestError("'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
                           f"\"function\": {{\"name\": ...}}}}, got {json.dumps(choice)}", "tool_choice")
    if choice == "required":
        raise RequestError("'tool_choice' \"required\" is not supported: send \"auto\" (the model decides), "
                           "\"none\", or {\"type\": \"function\", \"function\": {\"name\": ...}} to force "
                           "one tool", "tool_choice")
    if named and choice["function"]["name"] not in tool_names(body):
        raise RequestError(f"'tool_choice' names the function {json.dumps(choice['function']['name'])}, which is "
                           f"not among the request's tools {json.dumps(tool_names(body))}; name one of them",
                           "tool_choice")


def settle_reply(reply: Reply, body: dict) -> Reply:
    """The reply as the request's tools allow: a call that is not allowed comes back as plain text.

    A call is kept when its name is among the request's tools, ``tool_choice`` is not "none" and (when
    a function is forced) it calls that function; otherwise its raw text (metadata line and body) is the
    content and the reply ends with "stop", as vLLM's and THUDM's servers answer. A forced call the
    model did not complete is answered the same way (its text, "stop"), never with an error.
    """
    forced, call = forced_tool(body), reply.tool_call
    if call is None:
        return reply if forced is None else replace(reply, finish_reason="stop")
    allowed = tool_names(body) if body.get("tool_choice") != "none" else []
    if call.name in allowed and forced in (None, call.name):
        return reply
    return replace(reply, content=reply.raw.strip(), tool_call=None, finish_reason="stop")


def check_unsupported(body: dict) -> None:
    """OpenAI options glmtune cannot honour: refused (400), never silently ignored."""
    for key in ("frequency_penalty", "presence_penalty"):
        if _number(body, key, float, 0.0, minimum=-2, maximum=2) != 0:
            raise RequestError(f"'{key}' is not supported (only 0); use 'repetition_penalty' (> 0, 1 = off) "
                               "to discourage repeats", key)
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise RequestError(f"'logprobs' must be true or false, got {json.dumps(logprobs)}", "logprobs")
    for key in ("logprobs", "top_logprobs"):
        if body.get(key) not in (None, False):
            raise RequestError(f"'{key}' is not supported: glmtune does not return token log probabilities", key)
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
            raise RequestError(f"'response_format' must be an object such as {{\"type\": \"text\"}}, got "
                               f"{json.dumps(fmt)}", "response_format")
        raise RequestError(f"'response_format' {json.dumps(fmt)} is not supported: replies are plain text "
                           "({\"type\": \"text\"})", "response_format")


def check_request(body: dict) -> None:
    """The options other than messages and sampling: types the handler relies on, and options refused."""
    stop_strings(body)
    _check_tool_choice(body)
    check_unsupported(body)
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise RequestError(f"'stream' must be true or false, got {json.dumps(body['stream'])}", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError(f"'stream_options' must be an object, got {json.dumps(options)}", "stream_options")


def content_length(header: str | None) -> int:
    """The request's Content-Length: a decimal number of bytes within the limit (absent: no body)."""
    if header is None:
        return 0
    text = header.strip()
    if not text.isdigit() or not text.isascii():
        raise RequestError(f"Content-Length must be a non-negative number of bytes, got {header!r}")
    length = int(text)
    if length > MAX_BODY_BYTES:
        raise RequestError(f"request body too large ({length} bytes; limit {MAX_BODY_BYTES})")
    return length


def parse_body(data: bytes) -> dict:
    """The JSON object of a request body; RequestError for anything else (too deep, invalid Unicode ...)."""
    try:
        body = json.loads(data or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise RequestError("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    try:
        check_text(json.dumps(body, ensure_ascii=False), "the request body")
    except ChatError as exc:  # a \ud800-style escape without its pair: not text any tokenizer can encode
        raise RequestError(f"{exc} (a lone surrogate escape such as \\ud800)") from None
    except RecursionError:
        raise RequestError("request body is nested too deeply") from None
    return body


def conversation_from_request(body: dict):
    """OpenAI ``messages`` (+ ``tools``) -> ChatGLM3 messages, via the data layer's OpenAI format."""
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise RequestError("'messages' must be a non-empty list", "messages")
    try:
        # tool_choice "none": the model is not shown the tools, so it answers in text.
        tools = None if body.get("tool_choice") == "none" else body.get("tools")
        conv = openai_conversation(body["messages"], tools)
    except DataError as exc:
        raise RequestError(str(exc), "messages") from None
    messages = rendered_messages(conv)
    if messages[-1].role == "assistant":
        raise RequestError("the last message must be from the user or a tool, not the assistant", "messages")
    return messages


def tool_calls_json(reply: Reply) -> list[dict]:
    call = reply.tool_call
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.parameters, ensure_ascii=False)}}]


def completion_json(reply: Reply, name: str, cid: str, created: int) -> dict:
    message = {"role": "assistant", "content": reply.content if reply.tool_call is None else None}
    if reply.tool_call is not None:
        message["tool_calls"] = tool_calls_json(reply)
    completion = len(reply.token_ids)
    return {"id": cid, "object": "chat.completion", "created": created, "model": name,
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
            "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": completion,
                      "total_tokens": reply.prompt_tokens + completion}}


def chunk_json(delta: dict, name: str, cid: str, created: int, finish_reason: str | None = None) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
