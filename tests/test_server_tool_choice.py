"""`glmtune serve` honours tool_choice as OpenAI's API does: "none", a forced function, and calls to unknown tools."""

from __future__ import annotations

import json

import openai
import pytest

from test_infer_chat_robust import ScriptedModel
from test_infer_trained import TOOLS, trained_chatbot
from test_server_openai import FUNCTIONS, WHO, client_for, running

WEATHER_Q = [{"role": "user", "content": "weather in Paris?"}]
FORCE = {"type": "function", "function": {"name": "get_time"}}
OTHER_TOOL = [{"type": "function", "function": {**TOOLS[0], "name": "get_time"}}]


@pytest.fixture(scope="module")
def client():
    _, model, tok = trained_chatbot()
    with running(model, tok) as srv:
        yield client_for(srv, None)


def _streamed(client, **request):
    chunks = list(client.chat.completions.create(model="ziggy", stream=True, **request))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    return text, calls, chunks[-1].choices[0].finish_reason


def test_tool_choice_none_answers_in_text(client):
    auto = client.chat.completions.create(model="ziggy", messages=WEATHER_Q, tools=FUNCTIONS)
    assert auto.choices[0].message.tool_calls  # the model calls the tool when it may
    out = client.chat.completions.create(model="ziggy", messages=WEATHER_Q, tools=FUNCTIONS, tool_choice="none")
    choice = out.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
    assert choice.message.content
    # The tools are not in the prompt: fewer prompt tokens than the same request with them.
    assert out.usage.prompt_tokens < auto.usage.prompt_tokens
    text, calls, finish = _streamed(client, messages=WEATHER_Q, tools=FUNCTIONS, tool_choice="none")
    assert (text, calls, finish) == (choice.message.content, [], choice.finish_reason)


def test_forced_function_is_called(client):
    # Left to itself the model answers "ping" without a call; forced, it calls get_time.
    ping = [{"role": "user", "content": "ping"}]
    auto = client.chat.completions.create(model="ziggy", messages=ping, tools=OTHER_TOOL)
    assert auto.choices[0].message.tool_calls is None and auto.choices[0].finish_reason == "stop"
    out = client.chat.completions.create(model="ziggy", messages=ping, tools=OTHER_TOOL, tool_choice=FORCE)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_time" and json.loads(call.function.arguments) == {"city": "Paris"}
    text, calls, finish = _streamed(client, messages=ping, tools=OTHER_TOOL, tool_choice=FORCE)
    assert text == "" and [c.function.name for c in calls] == ["get_time"] and finish == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_call_to_a_tool_not_in_the_request_comes_back_as_text(stream):
    _, _, tok = trained_chatbot()
    raw = "get_weather\n```python\ntool_call(city='Paris')\n```"
    model = ScriptedModel(tok.encode(raw), min(tok.stop_ids), tok.vocab_size)
    with running(model, tok) as srv:
        client = client_for(srv, None)
        if stream:
            assert _streamed(client, messages=WEATHER_Q, tools=OTHER_TOOL) == (raw, [], "stop")
            return
        choice = client.chat.completions.create(model="ziggy", messages=WEATHER_Q, tools=OTHER_TOOL).choices[0]
    assert (choice.message.content, choice.message.tool_calls, choice.finish_reason) == (raw, None, "stop")


def test_forcing_a_function_not_among_the_tools_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="ziggy", messages=WHO, tools=FUNCTIONS,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    assert info.value.param == "tool_choice" and '"nope"' in info.value.message
    assert "get_weather" in info.value.message
    with pytest.raises(openai.BadRequestError, match="required.*not supported"):
        client.chat.completions.create(model="ziggy", messages=WHO, tools=FUNCTIONS, tool_choice="required")
