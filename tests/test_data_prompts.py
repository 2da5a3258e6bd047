"""Generation prompts (issue 8): any conversation ending with a user or observation turn is a prompt.

References come from ``fixtures/chatglm3-encodings.jsonl``. The official
prompt (``build_chat_input``) and the official training sequence are both the
concatenation of ``build_single_message`` per message, so the prompt before an
assistant turn of a ``chat`` case is its ids up to that turn's ``<|assistant|>``,
and the prompt of a shorter history is the reference with those messages' segments left out.
"""

from __future__ import annotations

import json

import pytest

from conftest import ENCODINGS, TINY, need_fixtures
from glmtune.cli import main
from glmtune.data import build_prompt
from glmtune.data.messages import Conversation, Message

ASSISTANT = 64796
ROLE_IDS = range(64794, 64798)


def _segments(ids: list[int]) -> list[list[int]]:
    """``[gMASK] sop`` then one list per message (each starts with its role token)."""
    segments = [ids[:2]]
    for i in ids[2:]:
        if i in ROLE_IDS:
            segments.append([])
        segments[-1].append(i)
    return segments


def _encode_prompts(tmp_path, records: list[dict], model=TINY) -> list[list[int]]:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["data", "encode", str(path), "--model", str(model), "--for-generation", "-o", str(out)]) == 0
    return [json.loads(x)["input_ids"] for x in out.read_text().splitlines()]


def _prompt_case(case: dict) -> list[tuple[str, dict, list[int]]]:
    history, query = case["input"]["history"], {"role": "user", "content": case["input"]["query"]}
    seg = _segments(case["input_ids"])  # prefix, system, user, assistant, query, <|assistant|>
    assert [s[0] for s in seg[1:]] == [64794, 64795, ASSISTANT, 64795, ASSISTANT]
    return [(case["name"], {"conversations": history + [query]}, case["input_ids"]),
            # no assistant turn yet: a first turn with a system prompt, and a bare first turn
            (case["name"] + "/first_turn", {"conversations": [history[0], query]}, seg[0] + seg[1] + seg[4] + seg[5]),
            (case["name"] + "/user_only", {"conversations": [query]}, seg[0] + seg[4] + seg[5])]


def _chat_case(case: dict) -> list[tuple[str, dict, list[int]]]:
    conv, tools, ids = case["input"]["conversations"], case["input"].get("tools"), case["input_ids"]
    tools_kw = {"tools": tools} if tools is not None else {}
    starts = [i for i, t in enumerate(ids) if t == ASSISTANT]
    out = []
    for i, msg in enumerate(conv):
        if msg["role"] == "tool":  # the call itself at the end of the history, no observation yet
            call = {key: v for key, v in msg.items() if key != "observation"}
            before = 1 + (tools is not None) + sum(1 + (m["role"] == "tool") for m in conv[:i])
            through_call = sum(len(s) for s in _segments(ids)[: before + 1])
            out.append((f"{case['name']}/{i}/call", {**tools_kw, "conversations": conv[:i] + [call]},
                        ids[:through_call] + [ASSISTANT]))
        if msg["role"] in ("assistant", "tool") and conv[i - 1]["role"] in ("user", "tool"):
            k = sum(m["role"] in ("assistant", "tool") for m in conv[:i])
            out.append((f"{case['name']}/{i}", {**tools_kw, "conversations": conv[:i]}, ids[: starts[k] + 1]))
    return out


def _reference_prompts() -> list[tuple[str, dict, list[int]]]:
    """(name, record ending with the user query / an observation / a tool call, official prompt ids)."""
    cases = [json.loads(x) for x in ENCODINGS.read_text().splitlines()]
    return [c for case in cases if case["kind"] in ("prompt", "chat")
            for c in (_prompt_case(case) if case["kind"] == "prompt" else _chat_case(case))]


def test_encode_for_generation_gives_the_official_prompts(tmp_path):
    need_fixtures()
    cases = _reference_prompts()
    names = [c[0] for c in cases]
    # First turns (no assistant message), one with tools, histories with answers, observations and a trailing call.
    assert {"prompt_with_history/first_turn", "prompt_with_history/user_only", "chat_tools/1", "chat_tools/3",
            "chat_tools/2/call"} <= set(names), names
    got = _encode_prompts(tmp_path, [c[1] for c in cases])
    for (name, _, want), ids in zip(cases, got):
        assert ids == want, name


def test_a_first_turn_is_not_refused_for_having_nothing_to_learn(tmp_path, tokenizer, chatglm3_dir):
    tools = [{"name": "get_weather", "parameters": {}}]
    records = [{"conversations": [{"role": "user", "content": "你好"}]},
               {"tools": tools, "conversations": [{"role": "user", "content": "北京天气"}]},
               {"conversations": [{"role": "user", "content": "a"},
                                  {"role": "assistant", "content": "b", "loss": False},
                                  {"role": "user", "content": "c"}]}]
    got = _encode_prompts(tmp_path, records, model=chatglm3_dir)  # whose tokenizer is `tokenizer`
    assert got[0] == build_prompt([Message("user", "你好")], tokenizer)
    assert got[1] == build_prompt(Conversation([Message("user", "北京天气")], tools=tools), tokenizer)
    assert got[2] == build_prompt([Message("user", "a"), Message("assistant", "b"), Message("user", "c")], tokenizer)


def test_a_prompt_needs_something_to_reply_to(tmp_path, capsys, chatglm3_dir):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"conversations": [{"role": "system", "content": "s"},
                                                  {"role": "assistant", "content": "x"}]}) + "\n")
    assert main(["data", "encode", str(path), "--model", str(chatglm3_dir), "--for-generation"]) == 1
    assert f"{path}:1: [chatglm3] nothing to reply to" in capsys.readouterr().err


@pytest.mark.parametrize("trailing", ["call", "observation"])
def test_a_trailing_tool_call_stays_in_the_prompt(tokenizer, trailing):
    from glmtune.data.chat_format import prompt_history, tool_call_body
    from glmtune.data.messages import ToolCall

    messages = [Message("user", "q"), Message("assistant", "let me look"),
                Message("assistant", tool_call=ToolCall("f", {"x": 1}))]
    if trailing == "observation":
        messages.append(Message("observation", "42"))
    kept = prompt_history(Conversation(messages)).messages
    assert kept == messages
    user, assistant, observation = (tokenizer.role_id(r) for r in ("user", "assistant", "observation"))
    want = tokenizer.prefix_ids() + [user] + tokenizer.encode("\n") + tokenizer.encode("q") + [assistant] \
        + tokenizer.encode("\n") + tokenizer.encode("let me look") \
        + [assistant] + tokenizer.encode("f\n") + tokenizer.encode(tool_call_body({"x": 1}))
    if trailing == "observation":
        want += [observation] + tokenizer.encode("\n") + tokenizer.encode("42")
    assert build_prompt(Conversation(kept), tokenizer) == want + [assistant]
