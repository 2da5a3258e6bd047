"""ChatGLM3 records at the edges of the format, against the official fine-tune demo (issue 8).

``_official`` restates ``format_conversation`` of THUDM/ChatGLM3
``finetune_chatmodel_demo/preprocess_utils.py`` (the last version that trained
tools) with ``build_single_message`` written out: role token +
encode(metadata + "\\n") + encode(content). Where glmtune follows it the ids
and labels must be equal; where it deliberately differs ``data check`` must say
so for that record.
"""

from __future__ import annotations

import json

import pytest

from glmtune.cli import main
from glmtune.data.chat_format import encode_chat, tool_call_body
from glmtune.data.convert import convert_record

TOOLS_PREFIX = "Answer the following questions as best as you can. You have access to the following tools:\n"


def _official(item: dict, tok) -> tuple[list[int], list[int]]:
    def single(role, metadata, text):
        return [tok.role_id(role)] + tok.encode(f"{metadata}\n") + tok.encode(text)

    conversations = list(item["conversations"])
    tokens, mask = tok.prefix_ids(), [0, 0]
    if "tools" in item:
        conversations.insert(0, {"role": "system",
                                 "content": TOOLS_PREFIX + json.dumps(item["tools"], indent=4, ensure_ascii=False)})
    for conv in conversations:
        loss = conv.get("loss", True)
        if conv["role"] in ("system", "user"):
            loss = False
        if conv["role"] == "tool":
            text = single("assistant", conv["name"], tool_call_body(conv["parameters"]))
            tokens += text
            mask += [int(loss)] * len(text)
            value = conv.get("observation", None)
            value = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            text = single("observation", "", value)
            tokens += text
            mask += [0] * len(text)
        else:
            text = single(conv["role"], "", conv["content"])
            tokens += text
            mask += [int(loss)] * len(text)
    tokens.append(tok.eos_token_id)
    mask.append(0)
    shifted = [0] + mask[:-1]
    return tokens, [t if m else -100 for t, m in zip(tokens, shifted)]


def _ours(item: dict, tok) -> tuple[list[int], list[int]]:
    return encode_chat(convert_record(item, "chatglm3", "d.jsonl", 1), tok)


USER = {"role": "user", "content": "北京天气？"}
CALL = {"role": "tool", "name": "weather", "parameters": {"city": "北京"}}
ANSWER = {"role": "assistant", "content": "晴。"}

FOLLOWED = {
    "trailing_call_without_observation": {"conversations": [USER, CALL]},
    "trailing_call_observation_null": {"conversations": [USER, {**CALL, "observation": None}]},
    "observation_not_a_string": {"conversations": [USER, {**CALL, "observation": {"t": 5}}, ANSWER]},
    "empty_tool_list": {"tools": [], "conversations": [USER, ANSWER]},
    "tools_described_in_words": {"tools": ["weather: the weather of a city"], "conversations": [USER, CALL]},
    "learned_observation_with_loss_true": {"conversations": [USER, {"role": "assistant", "content": "查询中"},
                                                             {"role": "observation", "content": "晴", "loss": True},
                                                             ANSWER]},
    "loss_true_on_user_is_ignored": {"conversations": [{**USER, "loss": True}, ANSWER]},
}


@pytest.mark.parametrize("name", sorted(FOLLOWED))
def test_edge_records_encode_as_the_official_demo(tokenizer, name):
    item = FOLLOWED[name]
    assert _ours(item, tokenizer) == _official(item, tokenizer)


DIFFERS = {
    "differs_tools_null": {"tools": None, "conversations": [USER, ANSWER]},
    "differs_metadata": {"conversations": [USER, {**ANSWER, "metadata": "note"}]},
    "differs_message_tools": {"conversations": [{"role": "system", "content": "s", "tools": [{"name": "weather"}]},
                                                USER, CALL]},
    "differs_observation_loss": {"conversations": [USER, {"role": "assistant", "content": "查询中"},
                                                   {"role": "observation", "content": "晴"}, ANSWER]},
}


@pytest.mark.parametrize("kind", sorted(DIFFERS))
def test_deliberate_differences_are_reported_for_the_record(tmp_path, tokenizer, capsys, kind, chatglm3_dir):
    item = DIFFERS[kind]
    assert _ours(item, tokenizer) != _official(item, tokenizer)  # a real difference, so it must be reported
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"conversations": [USER, ANSWER]}) + "\n" + json.dumps(item, ensure_ascii=False) + "\n")
    assert main(["data", "check", str(path), "--model", str(chatglm3_dir), "--json"]) == 0
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if "warning:" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"{path}:2: warning: [chatglm3] ") and "official demo" in lines[0]
    assert json.loads(captured.out)["warnings"] == {kind: 1}


def test_a_missing_observation_inside_a_conversation_is_refused_saying_what_the_demo_does(tmp_path):
    from glmtune.data.errors import RecordError

    with pytest.raises(RecordError, match="the official demo would render the observation 'null'"):
        convert_record({"conversations": [USER, CALL, ANSWER]}, "chatglm3", "d.jsonl", 1)
