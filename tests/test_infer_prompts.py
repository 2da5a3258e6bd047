"""Chat and serve build the generation prompt with the data layer's one function, for any conversation.

First turns (no assistant message yet), tools, and tool calls in the history
give exactly ``build_prompt`` of the same conversation, and the official
reference prompt of ``chatglm3-encodings.jsonl``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from conftest import ENCODINGS, need_fixtures
from glmtune.data.chat_format import build_prompt
from glmtune.data.messages import Conversation, Message, ToolCall
from glmtune.infer.chat import ChatSession
from glmtune.infer.server import conversation_from_request
from test_infer_trained import TOOLS, trained_chatbot

OPENAI_TOOLS = [{"type": "function", "function": t} for t in TOOLS]


class NoModel:
    """Prompts only: no weights, no context limit."""

    config = SimpleNamespace()

    def parameters(self):
        return iter(())


def server_prompt(tok, body: dict) -> list[int]:
    """The prompt the server generates from for this request body."""
    return ChatSession(NoModel(), tok, history=conversation_from_request(body)).prompt_ids()


@pytest.fixture(scope="module")
def tok():
    return trained_chatbot()[2]


def test_first_turn_with_tools_in_chat_and_serve(tok):
    expected = build_prompt(Conversation([Message("user", "weather in Paris?")], tools=TOOLS), tok)
    body = {"messages": [{"role": "user", "content": "weather in Paris?"}], "tools": OPENAI_TOOLS}
    assert server_prompt(tok, body) == expected
    session = ChatSession(NoModel(), tok, tools=TOOLS)
    session.add("user", "weather in Paris?")
    assert session.prompt_ids() == expected


def test_first_turn_without_tools_in_chat_and_serve(tok):
    expected = build_prompt(Conversation([Message("user", "ping")]), tok)
    assert server_prompt(tok, {"messages": [{"role": "user", "content": "ping"}]}) == expected
    session = ChatSession(NoModel(), tok)
    session.add("user", "ping")
    assert session.prompt_ids() == expected


def test_tool_call_in_the_history_is_kept(tok):
    call = ToolCall("get_weather", {"city": "Paris"})
    expected = build_prompt(Conversation([Message("user", "weather in Paris?"), Message("assistant", tool_call=call),
                                          Message("observation", '{"temp": 21}')], tools=TOOLS), tok)
    body = {"tools": OPENAI_TOOLS, "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'}]}
    prompt = server_prompt(tok, body)
    assert prompt == expected and "tool_call(city='Paris')" in tok.decode(prompt)


def test_official_reference_prompt_in_chat_and_serve():
    need_fixtures()
    from glmtune import load_tokenizer
    from conftest import TINY

    tok = load_tokenizer(TINY)
    case = next(c for c in map(json.loads, ENCODINGS.read_text(encoding="utf-8").splitlines())
                if c["kind"] == "prompt")
    history, query = case["input"]["history"], case["input"]["query"]
    messages = [{"role": m["role"], "content": m["content"]} for m in history] + [{"role": "user", "content": query}]
    assert server_prompt(tok, {"messages": messages}) == case["input_ids"]
    system = [m["content"] for m in history if m["role"] == "system"]
    session = ChatSession(NoModel(), tok, system=system[0] if system else None,
                          history=[Message(m["role"], m["content"]) for m in history if m["role"] != "system"])
    session.add("user", query)
    assert session.prompt_ids() == case["input_ids"]
