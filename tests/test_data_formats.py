"""Every input format -> the same internal messages and the same ids; every file type is read."""

from __future__ import annotations

import csv
import json

import pytest

from glmtune.data import DataConfig, prepare_splits
from glmtune.data.chat_format import encode_chat
from glmtune.data.process import load_conversations
from glmtune.data.convert import convert_record, detect_format
from glmtune.data.messages import Conversation, Message, ToolCall

TOOLS = [{"name": "track", "description": "price", "parameters": {"type": "object",
          "properties": {"symbol": {"description": "code"}}, "required": ["symbol"]}}]

# One tool-using conversation, written in each format's own convention.
CHATGLM3 = {"tools": TOOLS, "conversations": [
    {"role": "user", "content": "AAPL?"},
    {"role": "tool", "name": "track", "parameters": {"symbol": "AAPL"}, "observation": {"price": 189.5}},
    {"role": "assistant", "content": "189.5"}]}
OPENAI = {"tools": [{"type": "function", "function": TOOLS[0]}], "messages": [
    {"role": "user", "content": "AAPL?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "track", "arguments": "{\"symbol\": \"AAPL\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "{\"price\": 189.5}"},
    {"role": "assistant", "content": "189.5"}]}
SHAREGPT = {"tools": json.dumps(TOOLS), "conversations": [
    {"from": "human", "value": "AAPL?"},
    {"from": "function_call", "value": "{\"name\": \"track\", \"arguments\": {\"symbol\": \"AAPL\"}}"},
    {"from": "observation", "value": "{\"price\": 189.5}"},
    {"from": "gpt", "value": "189.5"}]}
EXPECTED_TOOL_MESSAGES = [Message("user", "AAPL?"), Message("assistant", tool_call=ToolCall("track", {"symbol": "AAPL"})),
                          Message("observation", "{\"price\": 189.5}"), Message("assistant", "189.5")]


def _conv(record, fmt=None):
    return convert_record(record, fmt or detect_format(record, "t", 1), "t", 1)


def test_tool_formats_map_to_same_messages_and_ids(tokenizer):
    convs = [_conv(r) for r in (CHATGLM3, OPENAI, SHAREGPT)]
    for conv in convs:
        assert conv.messages == EXPECTED_TOOL_MESSAGES
        assert conv.tools == TOOLS
    ids = [encode_chat(c, tokenizer) for c in convs]
    assert ids[0] == ids[1] == ids[2]
    assert tokenizer.decode(ids[0][0]).count("tool_call(symbol='AAPL')") == 1


def test_detection_by_keys():
    assert [detect_format(r, "t", 1) for r in (CHATGLM3, OPENAI, SHAREGPT)] == ["chatglm3", "openai", "sharegpt"]
    assert detect_format({"instruction": "a", "output": "b"}, "t", 1) == "alpaca"
    assert detect_format({"context": "a", "target": "b"}, "t", 1) == "base"
    assert detect_format({"prompt": "a", "response": "b"}, "t", 1) == "base"


def test_alpaca_to_messages():
    rec = {"system": "Be brief.", "instruction": "Translate", "input": "猫", "output": "cat",
           "history": [["hi", "hello"]]}
    assert _conv(rec).messages == [Message("system", "Be brief."), Message("user", "hi"),
                                   Message("assistant", "hello"), Message("user", "Translate\n猫"),
                                   Message("assistant", "cat")]
    assert _conv({"instruction": "Say hi", "input": "", "output": "hi"}).messages == [
        Message("user", "Say hi"), Message("assistant", "hi")]


def test_openai_plain_and_parallel_tool_calls():
    rec = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "Q"}]},
                        {"role": "assistant", "content": "Let me check.", "tool_calls": [
                            {"id": "a", "function": {"name": "f", "arguments": {"x": 1}}},
                            {"id": "b", "function": {"name": "g", "arguments": "{}"}}]},
                        {"role": "tool", "tool_call_id": "b", "content": "G"},
                        {"role": "tool", "tool_call_id": "a", "content": "F"},
                        {"role": "assistant", "content": "done", "loss": False}]}
    assert _conv(rec).messages == [
        Message("system", "S"), Message("user", "Q"), Message("assistant", "Let me check."),
        Message("assistant", tool_call=ToolCall("g", {})), Message("observation", "G"),
        Message("assistant", tool_call=ToolCall("f", {"x": 1})), Message("observation", "F"),
        Message("assistant", "done", loss=False)]


def test_sharegpt_to_messages():
    rec = {"system": "S", "conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
                                            {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]}
    assert _conv(rec).messages == [Message("system", "S"), Message("user", "Q1"), Message("assistant", "A1"),
                                   Message("user", "Q2"), Message("assistant", "A2")]


def test_base_format_file(tmp_path, tokenizer):
    path = tmp_path / "base.jsonl"
    path.write_text(json.dumps({"prompt": "类型#裙", "response": "一条裙子"}, ensure_ascii=False) + "\n")
    splits = prepare_splits(DataConfig(train_file=str(path), cache=False, max_input_length=64,
                                       max_output_length=64), tokenizer)
    ctx = tokenizer.prefix_ids() + tokenizer.encode("类型#裙")
    tgt = tokenizer.encode("一条裙子") + [2]
    assert splits.train[0] == {"input_ids": ctx + tgt, "labels": [-100] * len(ctx) + tgt}


def test_advertisegen_json_lines_with_column_mapping(tmp_path, tokenizer):
    # The official AdvertiseGen train.json: JSON lines under a .json name, content/summary columns.
    path = tmp_path / "train.json"
    rows = [{"content": "类型#裤*颜色#黑色", "summary": "黑色的裤子很百搭。"}, {"content": "类型#上衣", "summary": "好看。"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    cfg = DataConfig(train_file="train.json", data_dir=str(tmp_path), columns={"content": "user", "summary": "assistant"},
                     cache=False)
    splits = prepare_splits(cfg, tokenizer)
    expected = encode_chat(Conversation([Message("user", rows[1]["content"]), Message("assistant", rows[1]["summary"])]),
                           tokenizer)
    assert len(splits.train) == 2
    assert (splits.train[1]["input_ids"], splits.train[1]["labels"]) == expected
    assert splits.report.formats[str(path)] == "columns"


def test_csv_and_parquet_and_json_array_read_alike(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": "Add", "input": "1+1", "output": "2"}, {"instruction": "Name a color", "input": "", "output": "red"}]
    (tmp_path / "a.json").write_text(json.dumps(rows, indent=2))
    with open(tmp_path / "a.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        w.writeheader()
        w.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    results = []
    for name in ("a.json", "a.csv", "a.parquet"):
        convs, problems = load_conversations(tmp_path / name, DataConfig(cache=False))
        assert not problems
        results.append([encode_chat(c, tokenizer) for c in convs])
        assert [c.line for c in convs] == {"a.json": [2, 7], "a.csv": [2, 3], "a.parquet": [1, 2]}[name]
    assert results[0] == results[1] == results[2]


def test_chatglm3_conversations_in_csv_cell(tmp_path, tokenizer):
    with open(tmp_path / "c.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["conversations"])
        w.writerow([json.dumps(CHATGLM3["conversations"])])
    convs, problems = load_conversations(tmp_path / "c.csv", DataConfig(format="chatglm3"))
    assert not problems and convs[0].messages == EXPECTED_TOOL_MESSAGES


def test_openai_conversation_needs_no_assistant_message():
    """The chat API converts a request: a history ending with the user is fine, a bad role is located."""
    from glmtune.data.errors import DataError
    from glmtune.data.formats import openai_conversation

    conv = openai_conversation([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                               [{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert [m.role for m in conv.messages] == ["system", "user"] and conv.tools == [{"name": "f", "parameters": {}}]
    with pytest.raises(DataError, match=r"^request: \[openai\] unknown role 'bot'"):
        openai_conversation([{"role": "bot", "content": "x"}])
