"""Every bundled sample dataset is valid, and its tool calls encode alike across conventions."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT
from glmtune.data import DataConfig, prepare_splits
from glmtune.data.chat_format import encode_chat
from glmtune.data.process import load_conversations

DATA = ROOT / "examples" / "data"
FILES = ["chatglm3_tools.jsonl", "openai_tools.jsonl", "sharegpt.json", "alpaca_zh.json", "base_context_target.jsonl"]


@pytest.mark.parametrize("name", FILES)
def test_sample_file_is_valid(name, tokenizer):
    convs, problems = load_conversations(DATA / name, DataConfig())
    assert not problems and len(convs) >= 2
    for conv in convs:
        ids, labels = encode_chat(conv, tokenizer)
        assert ids[-1] == tokenizer.eos_token_id and any(t != -100 for t in labels)


def test_registry_mixes_every_sample(tokenizer):
    names = list(json.loads((DATA / "registry.json").read_text()))
    splits = prepare_splits(DataConfig(registry_file="registry.json", datasets=names, data_dir=str(DATA), cache=False),
                            tokenizer)
    assert len(splits.train) == 3 + 2 + 2 + 2 + 3  # alpaca at ratio 0.5 of 3 -> 2 (rounded)
    assert splits.report.tool_calls == 3


def test_advertise_gen_official_layout(tokenizer):
    cfg = DataConfig(data_dir=str(DATA / "advertise_gen"), train_file="train.json", val_file="dev.json",
                     columns={"content": "user", "summary": "assistant"}, cache=False)
    splits = prepare_splits(cfg, tokenizer)
    assert (len(splits.train), len(splits.validation)) == (3, 1)
    assert splits.conversations("validation")[0].messages[-1].content == "红色复古长裙，优雅又有气场。"
