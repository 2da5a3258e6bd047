"""glmtune.chat / glmtune.stream_chat: the official model.chat(tokenizer, query, history) on the tiny trained bot."""

from __future__ import annotations

import pytest

import glmtune
from glmtune.infer.chat import ChatError, ChatSession
from glmtune.infer.sampling import SamplingConfig
from test_infer_trained import IDENTITY, OBSERVATION, TOOLS, WEATHER, trained_chatbot

GREEDY = {"do_sample": False, "max_new_tokens": 48}


@pytest.fixture(scope="module")
def bot():
    return trained_chatbot()[1:]


def test_multi_turn_history_as_the_official(bot):
    model, tok = bot
    response, history = glmtune.chat(model, tok, "ping", history=[], **GREEDY)
    assert response == "pong"
    assert history == [{"role": "user", "content": "ping"}, {"role": "assistant", "metadata": "", "content": "pong"}]
    before = list(history)
    response, history2 = glmtune.chat(model, tok, "ping again", history=history, **GREEDY)
    assert response == "pong pong" and history == before  # the caller's list is not modified
    assert history2[:2] == history and history2[2:] == [
        {"role": "user", "content": "ping again"}, {"role": "assistant", "metadata": "", "content": "pong pong"}]
    # The same turns through ChatSession (glmtune chat / serve): same replies.
    session = ChatSession(model, tok, sampling=SamplingConfig(temperature=0, max_new_tokens=48))
    assert [session.chat("ping").content, session.chat("ping again").content] == ["pong", "pong pong"]


def test_tool_call_returns_name_and_parameters_then_uses_the_observation(bot):
    model, tok = bot
    response, history = glmtune.chat(model, tok, "weather in Paris?", tools=TOOLS, **GREEDY)
    assert response == {"name": "get_weather", "parameters": {"city": "Paris"}}
    assert history[0]["role"] == "system" and history[0]["tools"] == TOOLS
    assert history[-1]["role"] == "assistant" and history[-1]["metadata"] == "get_weather"
    response, history = glmtune.chat(model, tok, OBSERVATION, history=history, role="observation", **GREEDY)
    assert response == WEATHER
    assert [h["role"] for h in history] == ["system", "user", "assistant", "observation", "assistant"]


def test_stream_chat_grows_to_what_chat_returns(bot):
    model, tok = bot
    items = list(glmtune.stream_chat(model, tok, "who are you", **GREEDY))
    partials = [text for text, _ in items[:-1]]
    assert len(partials) > 2 and all(b.startswith(a) for a, b in zip(partials, partials[1:]))
    assert partials[-1] == IDENTITY and items[-2][1][-1] == {"role": "assistant", "metadata": "", "content": IDENTITY}
    assert items[-1] == glmtune.chat(model, tok, "who are you", **GREEDY)
    tool_items = list(glmtune.stream_chat(model, tok, "weather in Paris?", tools=TOOLS, **GREEDY))
    assert tool_items[-1][0] == {"name": "get_weather", "parameters": {"city": "Paris"}}


def test_seeded_sampling_is_reproducible_and_max_length_caps_the_reply(bot):
    model, tok = bot
    first = glmtune.chat(model, tok, "who are you", temperature=1.5, top_p=1.0, seed=5)
    assert glmtune.chat(model, tok, "who are you", temperature=1.5, top_p=1.0, seed=5) == first
    prompt_len = len(glmtune.data.build_prompt([{"role": "user", "content": "who are you"}], tok))
    short, _ = glmtune.chat(model, tok, "who are you", do_sample=False, max_length=prompt_len + 3)
    assert IDENTITY.startswith(short) and len(tok.encode(short)) <= 3 < len(tok.encode(IDENTITY))


@pytest.mark.parametrize("kwargs, fragment", [
    ({"history": [{"role": "system", "content": "x"}], "system": "y"}, "already starts with a system message"),
    ({"num_beams": 2}, "beam search is not supported"),
    ({"history": [{"role": "robot", "content": "x"}]}, "history[0]"),
    ({"history": [{"role": "user", "content": {"a": 1}}]}, "must be text"),
    ({"role": "assistant"}, "'user' or 'observation'"),
    ({"max_length": 3}, "max_length=3"),
])
def test_bad_calls_are_chat_errors(bot, kwargs, fragment):
    model, tok = bot
    with pytest.raises(ChatError) as info:
        glmtune.chat(model, tok, "ping", **kwargs)
    assert fragment in str(info.value)
