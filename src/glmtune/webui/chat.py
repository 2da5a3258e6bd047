"""Chat page state: one loaded model and a :class:`glmtune.infer.chat.ChatSession` over it.

History shown in the page is Gradio's "messages" list (``{"role", "content"}``
dicts); the session keeps the real ChatGLM3 history (tool-call metadata,
observation turns), so the next prompt is encoded exactly as ``glmtune chat``
would encode it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import UserError


@dataclass
class LoadedModel:
    """A model + tokenizer loaded for chat, eval and the export page's source."""

    key: tuple
    model: object
    tokenizer: object
    label: str


@dataclass
class ChatState:
    """Per-browser-session chat state (a Gradio ``State`` value)."""

    loaded: LoadedModel | None = None
    session: object | None = None
    history: list[dict] = field(default_factory=list)


def load(state: ChatState, weights: dict, device: str = "auto", reset: bool = True) -> str:
    """Load ``weights`` (model / adapter / prefix paths) unless already loaded.

    The conversation restarts when another model is loaded, or when ``reset``
    (the chat page's Load button; the eval page shares the model and passes False).
    """
    # deferred: imports torch
    from ..infer.loading import load_for_inference

    model_path = (weights.get("model") or "").strip()
    if not model_path:
        raise UserError("model folder: empty; pick a run result or type a model folder")
    key = (model_path, weights.get("adapter") or None, weights.get("prefix") or None, device)
    if state.loaded is None or state.loaded.key != key:
        model, tok = load_for_inference(model_path, adapter=key[1], prefix=key[2], device=device)
        extra = f" + adapter {key[1]}" if key[1] else f" + prefix {key[2]}" if key[2] else ""
        state.loaded = LoadedModel(key, model, tok, f"{model_path}{extra}")
        reset = True
    if reset:
        state.session, state.history = None, []
    return f"loaded {state.loaded.label}"


def parse_tools(text: str) -> list | None:
    """Tools typed as JSON (ChatGLM3 or OpenAI function format), or None when the box is empty."""
    # deferred: imports torch
    from ..infer.loading import normalize_tools

    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"tools: invalid JSON at line {exc.lineno} ({exc.msg}); expected a list of tool "
                        "definitions") from None
    return normalize_tools(data, "tools")


def start_session(state: ChatState, system: str, tools_text: str, sampling) -> None:
    """A fresh session with the current system prompt, tools and sampling (history kept from the page)."""
    # deferred: imports torch
    from ..infer.chat import ChatSession

    if state.loaded is None:
        raise UserError("no model loaded: pick a model (or a run result) and press Load")
    state.session = ChatSession(state.loaded.model, state.loaded.tokenizer, system=system.strip() or None,
                                tools=parse_tools(tools_text), sampling=sampling)


def send(state: ChatState, text: str, role: str, system: str, tools_text: str, sampling) -> Iterator[list[dict]]:
    """Add a user (or observation) turn and stream the reply: yields the page history as it grows."""
    if not text.strip():
        raise UserError("empty message: type something to send")
    if state.session is None:
        start_session(state, system, tools_text, sampling)
    else:
        state.session.with_sampling(**{k: getattr(sampling, k) for k in sampling.__dataclass_fields__})
    shown = text if role == "user" else f"observation: {text}"
    state.history = [*state.history, {"role": "user", "content": shown}, {"role": "assistant", "content": ""}]
    stream = state.session.send(text, role=role)
    for piece in stream:
        state.history[-1] = {"role": "assistant", "content": state.history[-1]["content"] + piece}
        yield list(state.history)
    reply = stream.reply
    if reply.tool_call is not None:
        call = json.dumps(reply.tool_call.parameters, ensure_ascii=False)
        state.history[-1] = {"role": "assistant", "content": f"🔧 tool call `{reply.tool_call.name}`: `{call}`\n\n"
                             "(type the tool's result in the observation box and send it)"}
    else:
        state.history[-1] = {"role": "assistant", "content": reply.content}
    yield list(state.history)


def clear(state: ChatState) -> list[dict]:
    state.session, state.history = None, []
    return []
