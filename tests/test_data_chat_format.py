"""The ChatGLM3 format against the official reference encodings, and the tool-call reply parser."""

from __future__ import annotations

import json

import pytest

from conftest import ENCODINGS, need_fixtures
from glmtune.data.chat_format import (build_prompt, encode_base, encode_chat, parse_reply, render_tool_call,
                                      tool_call_body)
from glmtune.data.convert import convert_record
from glmtune.data.messages import Conversation, Message, ToolCall


def _cases(kind):
    need_fixtures()
    return [c for c in map(json.loads, ENCODINGS.read_text().splitlines()) if c["kind"] == kind]


def test_chat_cases_match_official(tokenizer):
    cases = _cases("chat")
    assert len(cases) == 4
    for case in cases:
        conv = convert_record(case["input"], "chatglm3", "fixture", 1)
        ids, labels = encode_chat(conv, tokenizer)
        assert ids == case["input_ids"], case["name"]
        assert labels == case["labels"], case["name"]


def test_base_cases_match_official(tokenizer):
    for case in _cases("base"):
        ids, labels = encode_base(case["input"]["context"], case["input"]["target"], tokenizer,
                                  case["max_source"], case["max_target"])
        assert (ids, labels) == (case["input_ids"], case["labels"]), case["name"]


def test_prompt_case_matches_official(tokenizer):
    (case,) = _cases("prompt")
    history = case["input"]["history"] + [{"role": "user", "content": case["input"]["query"]}]
    assert build_prompt(history, tokenizer) == case["input_ids"]
    messages = [Message(m["role"], m["content"]) for m in history]
    assert build_prompt(messages, tokenizer) == case["input_ids"]
    assert build_prompt(Conversation(messages), tokenizer) == case["input_ids"]


def test_prompt_system_tools_rendered_like_build_chat_input(tokenizer):
    tools = [{"name": "track", "parameters": {"symbol": "str"}}]
    ids = build_prompt([{"role": "system", "content": "Use tools.", "tools": tools},
                        {"role": "user", "content": "hi"}], tokenizer)
    system_text = "Use tools.\n" + json.dumps(tools, indent=4, ensure_ascii=False)
    expected = (tokenizer.prefix_ids() + [tokenizer.role_id("system")] + tokenizer.encode("\n")
                + tokenizer.encode(system_text) + [tokenizer.role_id("user")] + tokenizer.encode("\n")
                + tokenizer.encode("hi") + [tokenizer.role_id("assistant")])
    assert ids == expected


def test_loss_rules_role_token_not_learned_next_token_is(tokenizer):
    conv = Conversation([Message("user", "a"), Message("assistant", "b"), Message("user", "c"),
                         Message("assistant", "d", loss=False)])
    ids, labels = encode_chat(conv, tokenizer)
    assistant = tokenizer.role_id("assistant")
    first = ids.index(assistant)
    assert labels[first] == -100 and labels[first + 1] == ids[first + 1]
    second_user = ids.index(tokenizer.role_id("user"), first)
    assert labels[second_user] == ids[second_user]  # token after a learned answer is learned
    assert labels[-1] == -100  # eos after a loss=false answer is not learned


def test_parse_reply_plain_and_tool_call():
    assert parse_reply("\n 你好！") == ("你好！", None)
    content, call = parse_reply("track\n```python\ntool_call(symbol='AAPL', days=3)\n```")
    assert call == ToolCall("track", {"symbol": "AAPL", "days": 3})
    assert "tool_call(" in content
    # Only the last assistant segment counts, trailing stop strings are dropped.
    assert parse_reply("x\nold<|assistant|>weather\n```python\ntool_call(city='北京')\n```<|observation|>")[1] \
        == ToolCall("weather", {"city": "北京"})


@pytest.mark.parametrize("params", [{}, {"a": "it's"}, {"n": [1, 2.5, None], "d": {"k": True}}, {"s": "多行\n文本"}])
def test_render_parse_round_trip(params):
    assert parse_reply(render_tool_call("f", params)) == (tool_call_body(params), ToolCall("f", params))


@pytest.mark.parametrize("body", ["tool_call(x=__import__('os').system('echo pwned'))", "tool_call('positional')",
                                  "tool_call(**{'a': 1})", "print('hi')\nx = 1", "tool_call(a=open('f'))"])
def test_parse_reply_never_evaluates(body, capfd):
    content, call = parse_reply(f"tool\n```python\n{body}\n```")
    assert call is None
    assert "pwned" not in capfd.readouterr().out


def test_metadata_without_call_is_plain_body():
    # e.g. the code interpreter: metadata names it, the body is code, not a tool_call
    assert parse_reply("interpreter\n```python\nprint(1)\n```") == ("```python\nprint(1)\n```", None)
