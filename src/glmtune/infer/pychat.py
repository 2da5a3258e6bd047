"""The official ``model.chat(tokenizer, query, history)`` / ``model.stream_chat`` as functions.

::

    import glmtune
    model, tok = glmtune.load_model("THUDM/chatglm3-6b"), glmtune.load_tokenizer("THUDM/chatglm3-6b")
    response, history = glmtune.chat(model, tok, "Hello", history=[])
    response, history = glmtune.chat(model, tok, "And in French?", history=history)
    for partial, history in glmtune.stream_chat(model, tok, "Tell me a story", history=history):
        print(partial)          # the reply so far

History is the official list of dicts (``role``, ``content``, an assistant's
``metadata``, a system message's ``tools``). With tools, a tool call comes back
as ``{"name": ..., "parameters": {...}}`` (a metadata reply that is not a call:
``{"name": ..., "content": ...}``); send the tool's result with
``role="observation"``. Built on :class:`~.chat.ChatSession`, so prompts,
replies and history are exactly those of ``glmtune chat`` and the server.
Unlike the official method, the caller's ``history`` list is never modified:
the new history is returned.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..data.messages import Message
from .chat import ChatError, ChatSession, Reply, ReplyStream
from .generation import sampling_config

ROLES = ("system", "user", "assistant", "observation")


def _message(item, index: int) -> Message:
    if isinstance(item, Message):
        return item
    if not isinstance(item, dict) or item.get("role") not in ROLES:
        raise ChatError(f"history[{index}] must be a dict with 'role' one of {', '.join(ROLES)} and 'content', "
                        f"got {item!r}")
    content = item.get("content", "")
    if not isinstance(content, str):
        raise ChatError(f"history[{index}]['content'] must be text, got {type(content).__name__} (a tool's result "
                        "goes in as a JSON string, as the official demo sends it)")
    return Message(item["role"], content=content, tools=item.get("tools"), metadata=item.get("metadata") or "")


def history_dicts(messages: list[Message]) -> list[dict]:
    """Messages as the official history: ``metadata`` on assistant turns, ``tools`` on a system turn that has them."""
    out = []
    for m in messages:
        entry = {"role": m.role, "content": m.content}
        if m.role == "assistant":
            entry = {"role": m.role, "metadata": m.metadata, "content": m.content}
        if m.tools:
            entry["tools"] = m.tools
        out.append(entry)
    return out


def _session(model, tokenizer, history, system, tools, options: dict) -> ChatSession:
    messages = [_message(item, i) for i, item in enumerate(history or [])]
    head = [m for m in messages[:1] if m.role == "system"]
    if head and (system is not None or tools):
        raise ChatError("the history already starts with a system message; pass system= or tools= only when "
                        "starting a conversation (history empty)")
    session = ChatSession(model, tokenizer, system=system, tools=tools, history=messages[len(head):],
                          sampling=sampling_config(**options))
    if head:
        session.system = head  # the conversation's own system turn (tools included) stays first
    return session


def _start(model, tokenizer, query, history, role, system, tools, max_length, max_new_tokens, num_beams,
           options) -> tuple[ChatSession, ReplyStream]:
    if num_beams != 1:
        raise ChatError(f"num_beams={num_beams}: beam search is not supported (sampling or greedy only)")
    session = _session(model, tokenizer, history, system, tools, {**options, "max_new_tokens": max_new_tokens or 1})
    session.add(role, query)  # ChatError unless role is user or observation (a tool's result)
    if max_new_tokens is None:  # the official max_length: prompt + reply
        limit = min(max_length, session.max_context or max_length)
        room = limit - len(session.prompt_ids())
        if room < 1:
            raise ChatError(f"the prompt already takes {limit - room} of max_length={limit} tokens; raise "
                            "max_length or shorten the history")
        session.with_sampling(max_new_tokens=room)
    return session, session.stream()


def response_of(session: ChatSession, reply: Reply):
    """The official ``process_response`` value: the text, or a dict for a tool call / metadata reply."""
    if reply.tool_call is not None:
        return {"name": reply.tool_call.name, "parameters": reply.tool_call.parameters}
    last = session.history[-1]
    if last.metadata.strip():
        return {"name": last.metadata.strip(), "content": reply.content}
    return reply.content


def chat(model, tokenizer, query: str, history: list | None = None, *, role: str = "user", system: str | None = None,
         tools: list | None = None, max_length: int = 8192, max_new_tokens: int | None = None, num_beams: int = 1,
         do_sample: bool = True, temperature: float = 0.8, top_p: float = 0.8, top_k: int = 0,
         repetition_penalty: float = 1.0, seed: int | None = None) -> tuple[object, list[dict]]:
    """One turn: ``(response, history)`` as the official ``model.chat``.

    ``system``/``tools`` start a conversation (history empty); the official sampling defaults
    (``do_sample=True``, ``temperature=0.8``, ``top_p=0.8``, ``max_length=8192`` for prompt + reply)
    apply; ``do_sample=False`` is greedy, ``seed`` makes sampling reproducible, ``max_new_tokens``
    caps the reply instead of ``max_length``.
    """
    options = dict(do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k,
                   repetition_penalty=repetition_penalty, seed=seed)
    session, stream = _start(model, tokenizer, query, history, role, system, tools, max_length, max_new_tokens,
                             num_beams, options)
    reply = stream.text()
    return response_of(session, reply), history_dicts(session.messages)


def stream_chat(model, tokenizer, query: str, history: list | None = None, *, role: str = "user",
                system: str | None = None, tools: list | None = None, max_length: int = 8192,
                max_new_tokens: int | None = None, num_beams: int = 1, do_sample: bool = True,
                temperature: float = 0.8, top_p: float = 0.8, top_k: int = 0, repetition_penalty: float = 1.0,
                seed: int | None = None) -> Iterator[tuple[object, list[dict]]]:
    """Yield ``(reply so far, history)`` as the text grows (official ``stream_chat``), then the finished pair.

    The last item is what :func:`chat` returns for the same turn: the full response (a dict for a tool
    call, whose body is not streamed) and the history with the reply. Options as :func:`chat`.
    """
    options = dict(do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k,
                   repetition_penalty=repetition_penalty, seed=seed)
    session, stream = _start(model, tokenizer, query, history, role, system, tools, max_length, max_new_tokens,
                             num_beams, options)
    asked = history_dicts(session.messages)
    text = ""
    for delta in stream:
        text += delta
        yield text, [*asked, {"role": "assistant", "metadata": "", "content": text}]
    yield response_of(session, stream.reply), history_dicts(session.messages)
