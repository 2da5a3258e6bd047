"""A minimal OpenAI-compatible server: ``POST /v1/chat/completions`` (plain and SSE) and ``GET /v1/models``.

Standard library only (``http.server``, one thread per connection). One model
generates one reply at a time: requests queue on a lock rather than
contending for the same weights. Tool definitions in ``tools`` become the
ChatGLM3 tools system prompt, and a tool-call reply comes back as OpenAI
``tool_calls`` with ``finish_reason: "tool_calls"``; ``role: "tool"``
messages go back to the model as ``<|observation|>`` turns.
"""

from __future__ import annotations

import json
import math
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..data.chat_format import rendered_messages
from ..data.errors import DataError
from ..data.formats import openai_conversation
from .chat import ChatError, ChatSession, Reply, check_text
from .sampling import SamplingConfig

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed


class RequestError(ValueError):
    """A request the server cannot serve; answered 400 with an OpenAI-style error object."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class ServerState:
    model: object
    tokenizer: object
    name: str
    defaults: SamplingConfig
    lock: threading.Lock


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


def _check_stop(body: dict) -> None:
    stop = body.get("stop")
    if stop is None:
        return
    if not isinstance(stop, (str, list)) or (isinstance(stop, list) and not all(isinstance(s, str) for s in stop)):
        raise RequestError(f"'stop' must be a string or a list of strings, got {json.dumps(stop)}", "stop")
    if any(stop if isinstance(stop, list) else [stop]):
        raise RequestError("'stop' sequences are not supported: a reply ends at the model's own end-of-turn "
                           "token; leave 'stop' out (or cut the text client-side)", "stop")


def _check_tool_choice(body: dict) -> None:
    choice = body.get("tool_choice")
    if choice is None:
        return
    named = (isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict)
             and isinstance(choice["function"].get("name"), str))
    if choice not in ("none", "auto", "required") and not named:
        raise RequestError("'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
                           f"\"function\": {{\"name\": ...}}}}, got {json.dumps(choice)}", "tool_choice")
    # The model itself decides whether to call a tool: that is "auto" (and "none" when no tools are given).
    if choice != "auto" and not (choice == "none" and not body.get("tools")):
        raise RequestError(f"'tool_choice' {json.dumps(choice)} is not supported: the model decides by itself whether "
                           "to call one of the tools (as \"auto\"); send \"auto\" or leave tool_choice out",
                           "tool_choice")


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
    _check_stop(body)
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
        conv = openai_conversation(body["messages"], body.get("tools"))
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


class Handler(BaseHTTPRequestHandler):
    server_version = "glmtune"
    protocol_version = "HTTP/1.1"
    state: ServerState  # set on the subclass made by make_server
    _replied = False  # whether a status line went out for the current request

    def log_message(self, fmt, *args):  # quiet by default; the CLI prints one line per request itself
        pass

    # -- plumbing ------------------------------------------------------------------------
    def _send_json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8", errors="replace")
        self._replied = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        self._send_json(status, {"error": {"message": message, "type": kind, "param": param, "code": None}})

    def _read_body(self) -> dict:
        length = content_length(self.headers.get("Content-Length"))
        return parse_body(self.rfile.read(length))

    def _client_gone(self) -> bool:
        """Whether the client closed its connection (readable with no data left means EOF)."""
        try:
            if hasattr(socket, "MSG_DONTWAIT"):  # no select(): it fails on descriptors above 1024
                return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False  # nothing to read: still connected
        except (OSError, ValueError):
            return True

    # -- routes --------------------------------------------------------------------------
    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [
                {"id": self.state.name, "object": "model", "created": 0, "owned_by": "glmtune"}]})
        elif path in ("", "/health"):
            self._send_json(200, {"status": "ok", "model": self.state.name})
        else:
            self._error(404, f"no route GET {self.path}; try /v1/models or POST /v1/chat/completions",
                        "not_found_error")

    def do_POST(self):  # noqa: N802
        try:
            self._post()
        except Exception as exc:  # noqa: BLE001 -- never drop a connection without a reply
            if not self._replied:
                self._error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")
            self.close_connection = True

    def _post(self) -> None:
        self._replied = False
        if self.path.split("?")[0].rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route POST {self.path}; try /v1/chat/completions", "not_found_error")
            return
        try:
            body = self._read_body()
            check_request(body)
            messages = conversation_from_request(body)
            sampling = sampling_from_request(body, self.state.defaults)
        except RequestError as exc:
            self.close_connection = True  # the body may not have been read: do not parse it as a request
            self._error(400, str(exc), param=exc.param)
            return
        session = ChatSession(self.state.model, self.state.tokenizer, sampling=sampling, history=messages)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        with self.state.lock:
            if self._client_gone():  # gave up while queued
                self.close_connection = True
                return
            try:
                stream = session.stream(should_stop=self._client_gone)
            except ChatError as exc:
                self._error(400, str(exc), param="messages")
                return
            if body.get("stream"):
                self._stream(stream, cid, created, bool((body.get("stream_options") or {}).get("include_usage")))
            else:
                reply = stream.text()
                if not self._client_gone():
                    self._send_json(200, completion_json(reply, self.state.name, cid, created))

    def _stream(self, stream, cid: str, created: int, include_usage: bool) -> None:
        name = self.state.name
        self._replied = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self._event(chunk_json({"role": "assistant", "content": ""}, name, cid, created))
            for delta in stream:
                self._event(chunk_json({"content": delta}, name, cid, created))
            reply = stream.reply
            if reply.tool_call is not None:
                calls = [{"index": 0, **c} for c in tool_calls_json(reply)]
                self._event(chunk_json({"tool_calls": calls}, name, cid, created))
            self._event(chunk_json({}, name, cid, created, reply.finish_reason))
            if include_usage:
                usage = completion_json(reply, name, cid, created)["usage"]
                self._event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                             "choices": [], "usage": usage})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away: stop generating (leaving the loop closes the token stream)

    def _event(self, payload: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n")
        self.wfile.flush()


def make_server(model, tokenizer, *, host: str = "127.0.0.1", port: int = 8000, name: str = "glmtune",
                defaults: SamplingConfig | None = None) -> ThreadingHTTPServer:
    """A ready-to-run server (``port=0`` picks a free port: see ``server.server_address``)."""
    state = ServerState(model, tokenizer, name, defaults or SamplingConfig(), threading.Lock())
    handler = type("GlmtuneHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
