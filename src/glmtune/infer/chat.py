"""A chat session: history, ChatGLM3 prompts, streamed replies and tool calls.

Shared by ``glmtune chat`` and the API server. History follows the official
``model.chat``: a plain reply is kept stripped, a tool call keeps its metadata
line (the tool name) and raw body, and a tool result goes back as an
``<|observation|>`` turn, so the next prompt re-encodes exactly what the
official demo would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from ..errors import UserError
from ..data.family_format import build_prompt, parse_reply
from ..families import Family, family_of
from ..data.messages import Message, ToolCall
from .generation import generate_stream, model_device
from .sampling import SamplingConfig, make_generator
from .streaming import IncrementalDecoder


class ChatError(UserError, ValueError):
    """A chat turn cannot be run (e.g. the prompt does not fit the model's context)."""


@dataclass
class Reply:
    """One assistant reply."""

    content: str
    """Text to show: the reply stripped, or a tool call's body."""
    tool_call: ToolCall | None
    """The parsed call when the reply calls a tool (name + parameters)."""
    raw: str
    """Decoded reply as generated: metadata line, newline, body."""
    token_ids: list[int] = field(default_factory=list)
    """Generated ids, stop token excluded."""
    finish_reason: str = "stop"
    """stop (a stop token), length (max_new_tokens reached) or tool_calls."""
    prompt_tokens: int = 0


def reply_message(raw: str, content: str, tool_call: ToolCall | None, family: Family) -> Message:
    """The history entry for a reply, as the official ``process_response`` keeps it.

    In families with tools a reply's first line is its metadata (a tool's name, or empty); ChatGLM2's has none.
    """
    metadata, body = raw.split("\n", 1) if "\n" in raw and family.has_tools else ("", raw)
    if metadata.strip():
        return Message("assistant", content=body, metadata=metadata)
    return Message("assistant", content=content)


def system_messages(system: str | None, tools: list | None, family: Family) -> list[Message]:
    if tools:
        if not family.has_tools:
            raise ChatError(f"{family.title} has no tool format; chat without tools")
        # The official tool demo's system prompt, unless the user gives their own.
        return [Message("system", content=system if system is not None else family.tools_system, tools=tools)]
    if system and not family.has_system:
        raise ChatError(f"{family.title} has no system prompt; chat without one")
    return [Message("system", content=system)] if system else []


class ReplyStream:
    """Iterate for the visible text as it is generated; ``.reply`` is set once iteration ends.

    The first line of a ChatGLM3 reply is metadata (empty for plain text, a
    tool name for a tool call), so text is streamed only after an empty
    metadata line; a tool call's body is held back and parsed at the end.
    Whatever was held back and is not a tool call is yielded at the end, so
    the streamed pieces always add up to ``reply.content``. ``should_stop``
    is asked before each token; True ends generation there.
    """

    def __init__(self, session: "ChatSession", prompt: list[int], should_stop: Callable[[], bool] | None = None):
        self.session, self.prompt, self.should_stop = session, prompt, should_stop
        self.reply: Reply | None = None

    def __iter__(self) -> Iterator[str]:
        session = self.session
        decoder = IncrementalDecoder(session.tokenizer)
        ids: list[int] = []
        shown = ""  # the visible text already yielded
        for token in self.tokens():
            if self.should_stop is not None and self.should_stop():
                break  # e.g. the client went away: leaving the loop ends generation
            ids.append(token)
            decoder.push(token)
            visible = _visible_text(decoder.text)
            if visible is not None and len(visible) > len(shown):
                yield visible[len(shown):]
                shown = visible
        self.reply = session._finish(self.prompt, ids, decoder.final_text())
        # Text held back (a reply without the metadata newline, or trailing whitespace) comes out now,
        # unless the reply turned out to be a tool call, whose body is not shown.
        if self.reply.tool_call is None and self.reply.content.startswith(shown):
            rest = self.reply.content[len(shown):]
            if rest:
                yield rest

    def tokens(self) -> Iterator[int]:
        """The generated ids, stop token excluded (the server's batcher overrides this to feed its own)."""
        session, cfg = self.session, self.session.sampling
        return generate_stream(session.model, self.prompt, max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                               repetition_penalty=cfg.repetition_penalty, generator=session.generator,
                               stop_ids=session.tokenizer.stop_ids)

    def text(self) -> Reply:
        """Run to the end and return the reply."""
        for _ in self:
            pass
        return self.reply


def _visible_text(text: str) -> str | None:
    """The streamable part of a partial reply, or None while it may still be a tool call."""
    if "\n" not in text:
        return None
    metadata, body = text.split("\n", 1)
    if metadata.strip():
        return None
    # Trailing whitespace may be followed by more text or stripped at the end: hold it back.
    return body.lstrip().rstrip()


def check_text(text: str, what: str) -> None:
    """ChatError unless ``text`` is valid Unicode: undecodable input bytes arrive as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ChatError(f"{what} is not valid UTF-8 text (undecodable data at character {exc.start}); "
                        "send it as UTF-8") from None


def _drop_oldest_exchange(history: list[Message]) -> bool:
    # An exchange runs from a user turn to the next one (tool calls and observations included).
    starts = [i for i, m in enumerate(history) if m.role == "user"]
    if len(starts) < 2:
        return False
    del history[: starts[1]]
    return True


class ChatSession:
    """Multi-turn chat with a model: history in, streamed reply out.

    ``session.send("hi")`` returns a :class:`ReplyStream`; ``session.chat("hi")``
    the finished :class:`Reply`. ``last_prompt`` holds the ids of the last
    prompt (for debugging and tests). History longer than the context is
    trimmed from the oldest exchange, keeping the system message.
    """

    def __init__(self, model, tokenizer, *, system: str | None = None, tools: list | None = None,
                 sampling: SamplingConfig | None = None, max_context: int | None = None,
                 history: list[Message] | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.sampling = sampling or SamplingConfig()
        self.system = system_messages(system, tools, family_of(tokenizer))
        self.history: list[Message] = list(history or [])
        config = getattr(model, "config", None)
        self.max_context = max_context or getattr(config, "max_position_embeddings", None)
        self.generator = make_generator(self.sampling.seed, model_device(model))
        self.last_prompt: list[int] = []
        self.last_reply: Reply | None = None

    @property
    def messages(self) -> list[Message]:
        return [*self.system, *self.history]

    def clear(self) -> None:
        """Forget the conversation (the system prompt and tools stay)."""
        self.history.clear()

    def add(self, role: str, content: str) -> None:
        if role not in ("user", "observation"):
            raise ChatError(f"a chat turn is 'user' or 'observation', not {role!r}")
        check_text(content, f"the {role} message")
        self.history.append(Message(role, content=content))

    def prompt_ids(self) -> list[int]:
        """The prompt for the next reply, trimming the oldest exchanges when it does not fit.

        When even the last exchange does not fit, :class:`ChatError` is raised
        and the history is left exactly as it was.
        """
        budget = None if self.max_context is None else self.max_context - self.sampling.max_new_tokens
        history = list(self.history)
        while True:
            ids = build_prompt([*self.system, *history], self.tokenizer)
            if budget is None or len(ids) <= budget:
                self.history[:] = history
                return ids
            if not _drop_oldest_exchange(history):
                raise ChatError(
                    f"the prompt is {len(ids)} tokens, but the model's context is {self.max_context} and "
                    f"{self.sampling.max_new_tokens} are reserved for the reply; shorten the message or the "
                    "system prompt, or lower max_new_tokens")

    def stream(self, should_stop: Callable[[], bool] | None = None) -> ReplyStream:
        """Generate the reply to the history as it stands (it must end with a user or observation turn)."""
        if not self.history or self.history[-1].role == "assistant":
            raise ChatError("nothing to reply to: add a user or observation turn first")
        self.last_prompt = self.prompt_ids()
        return ReplyStream(self, self.last_prompt, should_stop)

    def send(self, content: str, role: str = "user") -> ReplyStream:
        """Add a turn and start the reply; a turn that cannot be answered (ChatError) is not kept."""
        self.add(role, content)
        try:
            return self.stream()
        except ChatError:
            self.history.pop()
            raise

    def chat(self, content: str, role: str = "user") -> Reply:
        return self.send(content, role).text()

    def _finish(self, prompt: list[int], ids: list[int], raw: str) -> Reply:
        content, call = parse_reply(raw, self.tokenizer)
        if call is not None:
            reason = "tool_calls"
        elif len(ids) >= self.sampling.max_new_tokens:
            reason = "length"
        else:
            reason = "stop"
        self.history.append(reply_message(raw, content, call, family_of(self.tokenizer)))
        self.last_reply = Reply(content=content, tool_call=call, raw=raw, token_ids=ids, finish_reason=reason,
                                prompt_tokens=len(prompt))
        return self.last_reply

    def with_sampling(self, **changes) -> "ChatSession":
        """Same model and history, other sampling settings (for per-request options in the server)."""
        self.sampling = replace(self.sampling, **changes)
        self.generator = make_generator(self.sampling.seed, model_device(self.model))
        return self

