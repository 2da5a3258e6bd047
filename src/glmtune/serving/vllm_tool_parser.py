"""vLLM tool-call parsers for glmtune exports: ``glmtune-chatglm3`` and ``glmtune-glm4``.

Usage (the exported folder's chat template renders the tools; this file reads the model's calls back)::

    vllm serve EXPORT --enable-auto-tool-choice --tool-call-parser glmtune-glm4 \\
        --tool-parser-plugin "$(python -c 'import glmtune.serving.vllm_tool_parser as m; print(m.__file__)')"

``glmtune-glm4`` serves GLM-4-9B and GLM-4-0414 exports (reply ``name\\n{json arguments}``),
``glmtune-chatglm3`` ChatGLM3 exports (metadata line ``name``, then a fenced ``tool_call(k=v, ...)``).
The parsing is the families' own ``parse_reply`` (the official ``process_response``), so a reply vLLM
serves is read exactly as ``glmtune chat``/``glmtune serve`` read it; a reply that is not a well-formed
call (malformed JSON, code-interpreter code) stays content.

Streaming, kept simple and correct: plain text streams through as it comes; text that may still become
a call (the first line while it could be a tool name, then the call itself) is held back until the call
is complete and parses, and is then sent as one tool call (id, name and whole arguments in one delta).
Held-back text that never became a call (a malformed call, a one-word answer) is released as content when
the family's stop token arrives, so a stream says what the non-streaming answer says. Not streamed: a
call's arguments piece by piece. Known limit: a reply cut by ``max_tokens`` or a ``stop`` string while
text is held back loses that text in the stream (the non-streaming answer has it).

This module imports without vLLM: :func:`parse_chatglm3`, :func:`parse_glm4` and :class:`CallStream`
are pure and tested in glmtune's suite; the vLLM classes are defined only when vLLM imports.
vLLM loads this file by path (``--tool-parser-plugin``), so every import here is absolute.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Callable

from glmtune.data import chat_format
from glmtune.families import glm4_format
from glmtune.families.base import FamilyError

ParsedReply = tuple[str, list[dict[str, str]]]
"""(content, [{"name": ..., "arguments": JSON text}]): content is "" when the reply is a call."""

# Stop tokens of the families' generation configs (the ids come from the served tokenizer's vocabulary).
STOP_TOKENS = ("<|user|>", "<|observation|>", "<|endoftext|>", "</s>")
# ChatGLM3: a call's body opens with an optional fence and ``tool_call(`` (the official demo's rendering).
_CHATGLM3_CALL_HEAD = re.compile(r"\s*(```[a-zA-Z]*[ \t]*\n)?\s*tool_call\(")


def _as_openai(content: str, call: Any) -> ParsedReply:
    if call is None:
        return content, []
    return "", [{"name": call.name, "arguments": json.dumps(call.parameters, ensure_ascii=False)}]


def parse_chatglm3(text: str) -> ParsedReply:
    """A ChatGLM3 reply as (content, calls), by :func:`glmtune.data.chat_format.parse_reply`."""
    return _as_openai(*chat_format.parse_reply(text))


def parse_glm4(text: str) -> ParsedReply:
    """A GLM-4 / GLM-4-0414 reply as (content, calls), by :func:`glmtune.families.glm4_format.parse_reply`."""
    return _as_openai(*glm4_format.parse_reply(text))


PARSERS: dict[str, Callable[[str], ParsedReply]] = {"glmtune-chatglm3": parse_chatglm3, "glmtune-glm4": parse_glm4}
"""vLLM ``--tool-call-parser`` name -> the pure parse it runs."""
FAMILY_PARSERS = {"chatglm3": "glmtune-chatglm3", "glm4": "glmtune-glm4", "glm4-0414": "glmtune-glm4"}


def parser_name(family: str) -> str:
    """The ``--tool-call-parser`` name for a model family (``glm4`` -> ``glmtune-glm4``)."""
    if family not in FAMILY_PARSERS:
        raise FamilyError(f"family {family!r} has no tool-call parser ({', '.join(FAMILY_PARSERS)} have; ChatGLM2's "
                          "format has no tools): serve it without --enable-auto-tool-choice/--tool-call-parser")
    return FAMILY_PARSERS[family]


# -- streaming: where a growing reply stands ----------------------------------------------------------
# A head function says, for the text so far, ("plain", start), ("wait", -1) or ("call", name):
# plain text whose content starts at index ``start``, text that may still become a call, or a call's head.
Head = tuple[str, Any]


def chatglm3_head(text: str) -> Head:
    """ChatGLM3: the metadata line decides; an empty one is plain text, a tool name opens a call."""
    if "\n" not in text:
        return "wait", -1
    metadata, body = text.split("\n", 1)
    if not metadata.strip():
        return "plain", len(text) - len(body.lstrip())
    if _CHATGLM3_CALL_HEAD.match(body):
        return "call", metadata.strip()
    # A named reply that is not (yet) a call, e.g. code-interpreter code: parse_reply decides at the end.
    return "wait", -1


def _is_tool_name(name: str) -> bool:
    # The family's own rule for a name line: its parse_reply reads "name\n{}" as a call exactly then.
    return glm4_format.parse_reply(f"{name}\n{{}}")[1] is not None


def glm4_head(text: str) -> Head:
    """GLM-4: a first line that is one word, followed by a line opening a JSON object, is a call's head."""
    stripped = text.lstrip()
    start = len(text) - len(stripped)
    name, newline, rest = stripped.partition("\n")
    if not newline:
        return ("wait", -1) if not name.strip() or _is_tool_name(name.strip()) else ("plain", start)
    if not _is_tool_name(name.strip()):
        return "plain", start
    rest = rest.lstrip()
    if not rest:
        return "wait", -1
    return ("call", name.strip()) if rest.startswith("{") else ("plain", start)


class CallStream:
    """The streaming state of one reply: feed it the whole text so far, get what to send now.

    Events: ``("content", text)``, or a complete call: ``("name", tool name)`` then ``("arguments", JSON)``.
    ``tool_names``: the request's tools; a call of any other name is content, as the official parser reads it.
    (A plain class, not a dataclass: older vLLM releases execute the plugin file without entering it in
    ``sys.modules``, where ``dataclass`` looks up the module of string annotations.)
    """

    def __init__(self, parse: Callable[[str], ParsedReply], head: Callable[[str], Head],
                 tool_names: frozenset[str] | None = None):
        self.parse, self.head, self.tool_names = parse, head, tool_names
        self.mode = "wait"  # wait | plain | call | done
        self.sent = 0  # plain mode: how much of the text has been sent
        self.events: list[tuple[str, str]] = []

    def _known(self, name: str) -> bool:
        return self.tool_names is None or name in self.tool_names

    def feed(self, text: str, finished: bool = False) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.mode == "wait":
            state, value = self.head(text)
            if state == "plain" or (state == "call" and not self._known(value)):
                self.mode, self.sent = "plain", value if state == "plain" else len(text) - len(text.lstrip())
            elif state == "call":
                self.mode = "call"
        if self.mode == "plain":
            if len(text) > self.sent:
                out.append(("content", text[self.sent:]))
                self.sent = len(text)
        elif self.mode == "call":
            out += self._finish_call(text, finished)
        elif self.mode == "wait" and finished:
            out += self._flush(text)
        self.events += out
        return out

    def _finish_call(self, text: str, finished: bool) -> list[tuple[str, str]]:
        content, calls = self.parse(text)
        if calls:
            self.mode = "done"
            return [("name", calls[0]["name"]), ("arguments", calls[0]["arguments"])]
        return self._flush(text) if finished else []

    def _flush(self, text: str) -> list[tuple[str, str]]:
        self.mode = "done"
        content, calls = self.parse(text)
        if calls and self._known(calls[0]["name"]):
            return [("name", calls[0]["name"]), ("arguments", calls[0]["arguments"])]
        if calls:  # a call of a tool the request does not offer: its text, as the reply says it
            content = text.strip()
        return [("content", content)] if content else []


def request_tool_names(request: Any) -> frozenset[str] | None:
    """Names of the request's function tools (None: the request lists none, every name is accepted)."""
    names = set()
    for tool in getattr(request, "tools", None) or []:
        function = tool.get("function") if isinstance(tool, dict) else getattr(tool, "function", None)
        name = function.get("name") if isinstance(function, dict) else getattr(function, "name", None)
        if name:
            names.add(name)
    return frozenset(names) or None


def parse_for_request(parse: Callable[[str], ParsedReply], text: str, request: Any) -> ParsedReply:
    """``parse(text)``, with a call of a tool the request does not offer read as content."""
    content, calls = parse(text)
    names = request_tool_names(request)
    if calls and names is not None and calls[0]["name"] not in names:
        return text.strip(), []
    return content, calls


def stop_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the families' stop tokens in the served tokenizer (their arrival ends a streamed reply)."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[token] for token in STOP_TOKENS if token in vocab}
    eos = getattr(tokenizer, "eos_token_id", None)
    return frozenset(ids | ({eos} if isinstance(eos, int) else set()))


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# -- the vLLM plugin -----------------------------------------------------------------------------------
def _vllm() -> dict[str, Any] | None:
    """vLLM's tool-parser base, registry and protocol classes (None without vLLM); both module layouts."""
    names: dict[str, Any] = {}
    try:
        # deferred: vLLM is optional (present only where the export is served); the layout moved in late 2025
        from vllm.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager
    except ImportError:
        try:
            # deferred: as above, vLLM's older layout
            from vllm.entrypoints.openai.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager
        except ImportError:
            return None
    try:
        # deferred: as above
        from vllm.entrypoints.openai.engine import protocol
    except ImportError:
        # deferred: as above, vLLM's older layout
        from vllm.entrypoints.openai import protocol
    names.update(ToolParser=ToolParser, ToolParserManager=ToolParserManager)
    for name in ("DeltaFunctionCall", "DeltaMessage", "DeltaToolCall", "ExtractedToolCallInformation",
                 "FunctionCall", "ToolCall"):
        names[name] = getattr(protocol, name)
    return names


VLLM = _vllm()

if VLLM is not None:
    V = VLLM

    class GlmtuneToolParser(V["ToolParser"]):
        """Shared by both families; a subclass names its ``parse`` and ``head`` (see :class:`CallStream`)."""

        parse: Callable[[str], ParsedReply] = staticmethod(parse_glm4)
        head: Callable[[str], Head] = staticmethod(glm4_head)

        def __init__(self, tokenizer, *args, **kwargs):  # newer vLLM may pass more (the request's tools)
            super().__init__(tokenizer, *args, **kwargs)
            self.stop_ids = stop_token_ids(tokenizer)
            self.stream: CallStream | None = None

        def extract_tool_calls(self, model_output, request):
            content, calls = parse_for_request(self.parse, model_output, request)
            if not calls:
                return V["ExtractedToolCallInformation"](tools_called=False, tool_calls=[], content=content)
            tool_calls = [V["ToolCall"](type="function", function=V["FunctionCall"](**call)) for call in calls]
            return V["ExtractedToolCallInformation"](tools_called=True, tool_calls=tool_calls, content=None)

        def extract_tool_calls_streaming(self, previous_text, current_text, delta_text, previous_token_ids,
                                         current_token_ids, delta_token_ids, request):
            if self.stream is None:
                self.stream = CallStream(self.parse, self.head, request_tool_names(request))
            finished = any(token in self.stop_ids for token in delta_token_ids)
            return self.delta(self.stream.feed(current_text, finished), finished)

        def delta(self, events, finished: bool):
            """Events as one DeltaMessage, recording the call where vLLM's finish check reads it."""
            content = "".join(text for kind, text in events if kind == "content")
            call = dict(event for event in events if event[0] in ("name", "arguments"))
            if not call:
                return V["DeltaMessage"](content=content) if content else None
            self.current_tool_id = 0
            self.prev_tool_call_arr = [{"name": call["name"], "arguments": json.loads(call["arguments"])}]
            self.streamed_args_for_tool = [call["arguments"]]
            head = dict(index=0, id=new_call_id(), type="function")
            if finished:
                # At the finish chunk vLLM replaces a delta whose first call carries arguments by the arguments
                # alone (its check for unstreamed ones), dropping id and name: the head goes first without them.
                tool_calls = [V["DeltaToolCall"](**head, function=V["DeltaFunctionCall"](name=call["name"])),
                              V["DeltaToolCall"](index=0, function=V["DeltaFunctionCall"](arguments=call["arguments"]))]
            else:
                tool_calls = [V["DeltaToolCall"](**head, function=V["DeltaFunctionCall"](**call))]
            return V["DeltaMessage"](content=content or None, tool_calls=tool_calls)

    class ChatGLM3ToolParser(GlmtuneToolParser):
        parse = staticmethod(parse_chatglm3)
        head = staticmethod(chatglm3_head)

    class GLM4ToolParser(GlmtuneToolParser):
        parse = staticmethod(parse_glm4)
        head = staticmethod(glm4_head)

    # Registered now (module=...): the decorator form of newer vLLM registers lazily by module path, and
    # a plugin loaded from a file has no importable module path of its own.
    V["ToolParserManager"].register_module(name=["glmtune-chatglm3"], module=ChatGLM3ToolParser)
    V["ToolParserManager"].register_module(name=["glmtune-glm4", "glmtune-glm4-0414"], module=GLM4ToolParser)
