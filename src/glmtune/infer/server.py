"""An OpenAI-compatible chat server on FastAPI + uvicorn that batches concurrent requests on one model.

``POST /v1/chat/completions`` (plain and SSE streaming, tools, ``stop``),
``GET /v1/models``, ``GET /health``. Requests are validated first
(:mod:`.openai_api`: a 400 naming the field, 404 for another model, 401 without
the API key when one is set); each valid request becomes a :class:`~.batching.Job`
that the single generation worker (:class:`~.batching.Batcher`) decodes together
with every other request in flight. The reply text is shaped by the same
:class:`~.chat.ReplyStream` ``glmtune chat`` uses (metadata line, tool calls via
the family's parser, history), run in a thread per request and fed by the
worker. A client that disconnects, or a reply that reaches a ``stop`` string,
frees its row at the next step. More than ``max_queue`` waiting requests get a 503.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import uvicorn
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from .batching import DONE, Batcher, Job, QueueFull
from ..data.family_format import render_tool_call
from .chat import ChatError, ChatSession, Reply, ReplyStream
from .openai_api import (MAX_BODY_BYTES, RequestError, StopText, check_model, check_request, chunk_json,
                         completion_json, content_length, conversation_from_request, error_json, forced_tool,
                         parse_body, sampling_from_request, settle_reply, stop_strings, tool_calls_json)
from .sampling import SamplingConfig

log = logging.getLogger("glmtune.serve")
_END = object()


@dataclass
class ServerState:
    model: object
    tokenizer: object
    name: str
    defaults: SamplingConfig
    batcher: Batcher
    executor: ThreadPoolExecutor
    api_key: str | None = None


class JobReplyStream(ReplyStream):
    """A :class:`ReplyStream` whose tokens come from the batcher; leaving it early cancels the job."""

    def __init__(self, session: ChatSession, prompt: list[int], job: Job, prefill: list[int] | None = None):
        super().__init__(session, prompt, should_stop=lambda: job.cancelled)
        self.job, self.prefill = job, list(prefill or [])

    def tokens(self) -> Iterator[int]:
        # A prefilled start of the reply (a forced tool's metadata line) is part of the text to parse.
        yield from self.prefill
        try:
            while True:
                item = self.job.out.get()
                if item is DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.job.cancel()


def turn_events(stream: JobReplyStream, stops: list[str],
                settle: Callable[[Reply], Reply] = lambda r: r) -> Iterator[tuple[str, object]]:
    """("text", delta) as the reply grows, then ("reply", Reply) with the content cut before a stop string.

    ``settle`` turns a tool call the request does not allow into text (:func:`.openai_api.settle_reply`);
    that text, held back while it looked like a call, is streamed then.
    """
    cutter = StopText(stops)
    for delta in stream:
        shown = cutter.push(delta)
        if shown:
            yield "text", shown
        if cutter.hit:
            stream.job.cancel()  # the stream ends at its next token (should_stop), its row is freed
    reply = settle(stream.reply)
    if not cutter.hit and reply.tool_call is None and reply.content.startswith(cutter.text):
        shown = cutter.push(reply.content[len(cutter.text):])
        if shown:
            yield "text", shown
    if cutter.hit:
        reply = replace(reply, content=cutter.text, finish_reason="stop")
    else:
        rest = cutter.flush()
        if rest:
            yield "text", rest
    yield "reply", reply


async def _client_gone(request: Request) -> None:
    """Returns once the client has disconnected (the body has been read: only a disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def thread_events(state: ServerState, request: Request, stream: JobReplyStream, stops: list[str],
                        settle: Callable[[Reply], Reply]) -> AsyncIterator[tuple[str, object]]:
    """:func:`turn_events` run in a worker thread, handed to the event loop; a disconnect cancels the job."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, item)
        except RuntimeError:
            pass  # the event loop is gone: the server is shutting down

    def run() -> None:
        try:
            for event in turn_events(stream, stops, settle):
                put(event)
            put(_END)
        except BaseException as exc:  # noqa: BLE001 -- handed to the request's handler
            put(("error", exc))

    loop.run_in_executor(state.executor, run)
    watcher = asyncio.ensure_future(_client_gone(request))
    try:
        while True:
            getter = asyncio.ensure_future(inbox.get())
            await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                return  # the client went away
            item = getter.result()
            if item is _END:
                return
            if item[0] == "error":
                raise item[1]
            yield item
    finally:
        watcher.cancel()
        stream.job.cancel()


def forced_prefill(tokenizer, name: str | None) -> list[int]:
    """The ids that start a reply calling ``name``: the family's text before the arguments (its metadata line).

    Appended to the prompt, they make the model write that tool's arguments (``tool_choice`` naming a function).
    """
    if name is None:
        return []
    text = render_tool_call(name, {}, tokenizer)
    return tokenizer.encode(text[:text.index("\n") + 1] if "\n" in text else text)


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_json(message, kind, param, code), status_code=status, headers=headers)


async def read_body(request: Request) -> dict:
    content_length(request.headers.get("content-length"))  # a declared size over the limit: refused unread
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestError(f"request body too large (over {MAX_BODY_BYTES} bytes)")
        chunks.append(chunk)
    return parse_body(b"".join(chunks))


def check_api_key(state: ServerState, request: Request) -> None:
    if state.api_key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), state.api_key.encode()):
        raise RequestError("missing or wrong API key: send 'Authorization: Bearer KEY' with the key the server was "
                           "started with (--api-key or GLMTUNE_API_KEY)", status=401, code="invalid_api_key")


async def chat_completions(state: ServerState, request: Request):
    try:
        check_api_key(state, request)
        body = await read_body(request)
        check_model(body, state.name)
        check_request(body)
        stops = stop_strings(body)
        messages = conversation_from_request(body)
        sampling = sampling_from_request(body, state.defaults)
        session = ChatSession(state.model, state.tokenizer, sampling=sampling, history=messages)
        prompt = session.stream().prompt  # ChatError when the conversation does not fit the context
        prefill = forced_prefill(state.tokenizer, forced_tool(body))
        job = state.batcher.submit(prompt + prefill, sampling, state.tokenizer.stop_ids)
    except RequestError as exc:
        return JSONResponse(exc.json(), status_code=exc.status)
    except ChatError as exc:
        return _error(400, str(exc), param="messages")
    except QueueFull as exc:
        return _error(503, str(exc), "server_error", headers={"Retry-After": "1"})
    stream = JobReplyStream(session, prompt, job, prefill)
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    events = thread_events(state, request, stream, stops, lambda reply: settle_reply(reply, body))
    if body.get("stream"):
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(sse(events, state.name, cid, created, usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    reply = None
    async for kind, value in events:
        if kind == "reply":
            reply = value
    if reply is None:  # the client went away; nobody reads this
        return _error(499, "client closed the request")
    return JSONResponse(completion_json(reply, state.name, cid, created))


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n"


async def sse(events: AsyncIterator, name: str, cid: str, created: int, include_usage: bool) -> AsyncIterator[bytes]:
    yield _event(chunk_json({"role": "assistant", "content": ""}, name, cid, created))
    reply = None
    try:
        async for kind, value in events:
            if kind == "text":
                yield _event(chunk_json({"content": value}, name, cid, created))
            else:
                reply = value
    except Exception as exc:  # noqa: BLE001 -- the status line went out already: report in the stream
        log.exception("generation failed")
        yield _event(error_json(f"internal error: {type(exc).__name__}: {exc}", "server_error"))
        return
    if reply is None:
        return
    if reply.tool_call is not None:
        calls = [{"index": 0, **c} for c in tool_calls_json(reply)]
        yield _event(chunk_json({"tool_calls": calls}, name, cid, created))
    yield _event(chunk_json({}, name, cid, created, reply.finish_reason))
    if include_usage:
        usage = completion_json(reply, name, cid, created)["usage"]
        yield _event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                      "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def make_app(state: ServerState, cors_origins: list[str] | None = None) -> FastAPI:
    app = FastAPI(title="glmtune", docs_url=None, redoc_url=None, openapi_url=None)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        routes = "GET /v1/models, GET /health, POST /v1/chat/completions"
        return _error(exc.status_code, f"no route {request.method} {request.url.path} ({exc.detail}); try {routes}",
                      "not_found_error" if exc.status_code == 404 else "invalid_request_error")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            check_api_key(state, request)
        except RequestError as exc:
            return JSONResponse(exc.json(), status_code=exc.status)
        return {"object": "list", "data": [{"id": state.name, "object": "model", "created": 0, "owned_by": "glmtune"}]}

    @app.get("/health")
    @app.get("/")
    async def health():
        return {"status": "ok", "model": state.name}

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        return await chat_completions(state, request)

    return app


def _log_config(access_log: bool) -> dict:
    """uvicorn's logging, quiet at startup (glmtune prints its own line); the access log when asked."""
    config = {**uvicorn.config.LOGGING_CONFIG, "loggers": {k: dict(v) for k, v in
                                                          uvicorn.config.LOGGING_CONFIG["loggers"].items()}}
    config["loggers"]["uvicorn.error"]["level"] = "WARNING"
    config["loggers"]["uvicorn.access"]["level"] = "INFO" if access_log else "WARNING"
    return config


class Server:
    """uvicorn serving the app on a socket bound at once (``port=0`` picks a free one: ``server_address``)."""

    def __init__(self, app: FastAPI, state: ServerState, host: str, port: int, *, access_log: bool = False):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family)
        self.server_address = self.socket.getsockname()[:2]
        self.state = state
        config = uvicorn.Config(app, lifespan="off", access_log=access_log, log_config=_log_config(access_log),
                                timeout_graceful_shutdown=5)
        self.uvicorn = uvicorn.Server(config)
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop serving (from another thread) and wait for ``serve_forever`` to return."""
        self.uvicorn.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()
        self.state.batcher.close()
        self.state.executor.shutdown(wait=False, cancel_futures=True)


def make_server(model, tokenizer, *, host: str = "127.0.0.1", port: int = 8000, name: str = "glmtune",
                defaults: SamplingConfig | None = None, max_batch: int = 32, max_queue: int = 256,
                api_key: str | None = None, cors_origins: list[str] | None = None,
                access_log: bool = False) -> Server:
    """A ready-to-run server: ``serve_forever()`` in some thread, ``shutdown()`` + ``server_close()`` to stop.

    ``max_batch=1`` decodes one request at a time (the old behaviour, for comparison).
    """
    # No gathering wait: on a busy machine a timed sleep oversleeps, and continuous batching lets
    # requests that arrive a moment later join at the next step anyway.
    batcher = Batcher(model, tokenizer, max_batch=max_batch, max_queue=max_queue)
    executor = ThreadPoolExecutor(max_workers=max_batch + max_queue + 4, thread_name_prefix="glmtune-reply")
    state = ServerState(model, tokenizer, name, defaults or SamplingConfig(), batcher, executor, api_key)
    return Server(make_app(state, cors_origins), state, host, port, access_log=access_log)
