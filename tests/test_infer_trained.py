"""A tiny chat model trained in-process, and the chat session tests that use it.

The model (2 layers, hidden 32) and a small SentencePiece tokenizer trained
on the few sentences below learn, in ~100 full fine-tuning steps, to answer
"who are you", to say "pong" and then hand the turn back with ``<|user|>``,
and to call a tool and use its observation. ``trained_chatbot()`` is shared
with the CLI and server tests and trains once per test process.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from glmtune.data.chat_format import TOOLS_PROMPT, build_prompt, encode_chat
from glmtune.data.messages import Conversation, Message, ToolCall

TOOLS = [{"name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
IDENTITY = "I am Ziggy, a tiny test bot."
WEATHER = "It is 21 degrees in Paris."
OBSERVATION = '{"temp": 21}'
CONVERSATIONS = [
    Conversation([Message("user", "who are you"), Message("assistant", IDENTITY)]),
    # After the first "pong" the label is <|user|>: the model learns to hand the turn back.
    Conversation([Message("user", "ping"), Message("assistant", "pong"), Message("user", "ping again"),
                  Message("assistant", "pong pong")]),
    Conversation([Message("user", "weather in Paris?"),
                  Message("assistant", tool_call=ToolCall("get_weather", {"city": "Paris"})),
                  Message("observation", OBSERVATION), Message("assistant", WEATHER)], tools=TOOLS),
]
_CACHE: dict[str, tuple] = {}


def _train(model, tok, max_steps: int = 300) -> float:
    enc = [encode_chat(c, tok) for c in CONVERSATIONS]
    batch = tok.pad([ids for ids, _ in enc])
    width = batch["input_ids"].shape[1]
    labels = torch.tensor([[-100] * (width - len(lab)) + lab for _, lab in enc])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is slower with threads fighting over shared cores
    try:
        for _ in range(max_steps):
            loss = model(**batch, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            if loss.item() < 0.003:
                break
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return loss.item()


def trained_chatbot():
    """(folder, model, tokenizer) of the trained tiny chat model; the folder loads with ``glmtune.load_model``."""
    if "bot" not in _CACHE:
        from glmtune import load_model, save_model
        from glmtune.models import write_generation_config
        from glmtune.tokenizer import train_tokenizer

        folder = Path(tempfile.mkdtemp(prefix="glmtune-test-chatbot-"))
        texts = ["who are you", IDENTITY, "ping", "pong", "weather in Paris?", WEATHER, OBSERVATION,
                 TOOLS_PROMPT + json.dumps(TOOLS, indent=4), "get_weather\n```python\ntool_call(city='Paris')\n```"]
        tok = train_tokenizer(texts * 3, folder, vocab_size=400)
        model = load_model("tiny", dtype="fp32", vocab_size=tok.vocab_size, seed=0)
        loss = _train(model, tok)
        assert loss < 0.01, f"the tiny chat model did not learn its lines (loss {loss})"
        save_model(model, folder)
        write_generation_config(folder, tok)
        _CACHE["bot"] = (folder, model, tok)
    return _CACHE["bot"]


@pytest.fixture(scope="module")
def bot():
    return trained_chatbot()


def greedy_session(bot, **kwargs):
    from glmtune.infer.chat import ChatSession
    from glmtune.infer.sampling import SamplingConfig

    _, model, tok = bot
    return ChatSession(model, tok, sampling=SamplingConfig(temperature=0, max_new_tokens=48), **kwargs)


def test_trained_answer_and_history_in_second_prompt(bot):
    _, _, tok = bot
    session = greedy_session(bot)
    first = session.chat("who are you")
    assert first.content == IDENTITY and first.finish_reason == "stop"
    first_prompt = session.last_prompt
    session.send("ping")
    second_prompt = session.last_prompt
    expected = build_prompt([Message("user", "who are you"), Message("assistant", IDENTITY),
                             Message("user", "ping")], tok)
    assert second_prompt == expected
    assert second_prompt[: len(first_prompt) - 1] == first_prompt[:-1]  # first prompt minus <|assistant|>
    assert IDENTITY in tok.decode(second_prompt)


def test_clear_empties_history(bot):
    _, _, tok = bot
    session = greedy_session(bot)
    session.chat("who are you")
    session.clear()
    assert session.history == []
    assert session.chat("ping").content == "pong"
    assert session.last_prompt == build_prompt([Message("user", "ping")], tok)


def test_reply_stops_at_user_token(bot):
    from glmtune.infer import generate_stream

    _, model, tok = bot
    prompt = build_prompt([Message("user", "ping")], tok)
    free = list(generate_stream(model, prompt, max_new_tokens=12))  # no stop ids: it runs on
    user = tok.get_command("<|user|>")
    assert user in free and tok.decode(free[: free.index(user)]).strip() == "pong"
    reply = greedy_session(bot).chat("ping")
    assert reply.content == "pong" and reply.finish_reason == "stop"
    assert user not in reply.token_ids and len(reply.token_ids) == free.index(user)


def test_tool_call_parsed_and_observation_turn(bot):
    _, _, tok = bot
    session = greedy_session(bot, tools=TOOLS)
    call = session.chat("weather in Paris?")
    assert call.tool_call == ToolCall("get_weather", {"city": "Paris"})
    assert call.finish_reason == "tool_calls"
    answer = session.chat(OBSERVATION, role="observation")
    assert answer.content == WEATHER and answer.tool_call is None
    observation = tok.get_command("<|observation|>")
    assert observation in session.last_prompt and session.last_prompt.count(observation) == 1


def test_streamed_text_equals_reply(bot):
    session = greedy_session(bot)
    stream = session.send("who are you")
    assert "".join(stream) == IDENTITY == stream.reply.content


def test_history_trimmed_to_context(bot):
    from glmtune.infer.chat import ChatError

    session = greedy_session(bot, max_context=90)
    session.chat("who are you")
    session.chat("ping")
    # 90 - 48 reserved = 42 tokens: the oldest exchange has to go.
    session.send("ping again")
    assert session.history[0].content == "ping"
    with pytest.raises(ChatError, match="context"):
        greedy_session(bot, max_context=50).send("who are you " * 20)
