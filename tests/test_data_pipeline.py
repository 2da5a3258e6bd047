"""prepare_splits: layouts, registry mixing, truncation accounting, caching, generation prompts."""

from __future__ import annotations

import json

import pytest

from glmtune.data import DataConfig, DataError, prepare_splits
from glmtune.data.chat_format import encode_chat
from glmtune.data.messages import Conversation, Message


def _chat(q, a):
    return {"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def test_official_layout_data_dir_and_split_files(tmp_path, tokenizer):
    d = tmp_path / "AdvertiseGen_fix"
    d.mkdir()
    _write(d / "train.json", [_chat("a", "b"), _chat("c", "d")])
    _write(d / "dev.json", [_chat("e", "f")])
    cfg = DataConfig(data_dir="AdvertiseGen_fix", train_file="train.json", val_file="dev.json", cache=False)
    splits = prepare_splits(cfg, tokenizer, base_dir=tmp_path)
    assert (len(splits.train), len(splits.validation), splits.test) == (2, 1, None)
    conv = Conversation([Message("user", "e"), Message("assistant", "f")])
    assert splits.validation[0] == dict(zip(("input_ids", "labels"), encode_chat(conv, tokenizer)))
    assert [m.content for m in splits.conversations("validation")[0].messages] == ["e", "f"]
    # Passing data_dir itself as base_dir (absolute or relative) must not join it twice.
    cfg_abs = DataConfig(data_dir=str(d), train_file="train.json", cache=False)
    assert len(prepare_splits(cfg_abs, tokenizer, base_dir=str(d)).train) == 2


def test_registry_mixes_datasets_with_ratios(tmp_path, tokenizer):
    _write(tmp_path / "a.jsonl", [_chat(f"q{i}", f"a{i}") for i in range(10)])
    _write(tmp_path / "b.jsonl", [{"instruction": f"i{i}", "output": f"o{i}"} for i in range(4)])
    (tmp_path / "registry.json").write_text(json.dumps({
        "chat": {"file": "a.jsonl", "ratio": 0.5},
        "alpaca": {"file": "b.jsonl", "format": "alpaca"}}))
    cfg = DataConfig(registry_file="registry.json", datasets=["chat", "alpaca:2"], data_dir=str(tmp_path), cache=False)
    splits = prepare_splits(cfg, tokenizer)
    assert len(splits.train) == 5 + 8
    assert splits.report.records == 14
    with pytest.raises(DataError, match="unknown dataset 'nope'; known: alpaca, chat"):
        prepare_splits(DataConfig(registry_file="registry.json", datasets=["nope"], data_dir=str(tmp_path)), tokenizer)


def test_truncation_is_counted_and_unlearnable_samples_dropped(tmp_path, tokenizer):
    long_answer = "word " * 200
    path = _write(tmp_path / "t.jsonl", [_chat("hi", "ok"), _chat("hi", long_answer), _chat("x " * 300, "y")])
    cfg = DataConfig(train_file=str(path), max_input_length=20, max_output_length=20, cache=False)
    splits = prepare_splits(cfg, tokenizer)
    rep = splits.report.splits["train"]
    # The dropped record was over the limit too: it counts under truncation (and is named as a warning).
    assert rep.truncated == 2 and rep.dropped == {"no_labels_after_truncation": 1}
    assert len(splits.train) == 2 and len(splits.train[1]["input_ids"]) == 41
    assert rep.length_percentiles["max"] > 300
    assert any("t.jsonl:3: warning: dropped (no_labels_after_truncation)" in e for e in rep.examples)
    drop = prepare_splits(DataConfig(train_file=str(path), max_seq_length=41, truncation="drop", cache=False), tokenizer)
    assert len(drop.train) == 1 and drop.report.splits["train"].dropped == {"too_long": 2}


def test_cache_hits_and_invalidates_on_anything_that_changes_ids(tmp_path, tokenizer):
    path = _write(tmp_path / "c.jsonl", [_chat("a", "b")])
    cfg = DataConfig(train_file=str(path), cache_dir=str(tmp_path / "cache"))
    first = prepare_splits(cfg, tokenizer)
    again = prepare_splits(cfg, tokenizer)
    assert first.report.from_cache == {"train": False} and again.report.from_cache == {"train": True}
    assert again.train[0] == first.train[0] and again.report.records == 1
    _write(path, [_chat("a", "changed")])
    edited = prepare_splits(cfg, tokenizer)
    assert not edited.report.from_cache["train"] and edited.train[0] != first.train[0]
    shorter = prepare_splits(DataConfig(train_file=str(path), cache_dir=str(tmp_path / "cache"), max_seq_length=8),
                             tokenizer)
    assert not shorter.report.from_cache["train"] and len(shorter.train[0]["input_ids"]) == 8


def test_parallel_workers_give_identical_results(tmp_path, tokenizer):
    records = [_chat(f"question {i}", f"answer {i} " * (i % 7)) for i in range(60)]
    records[17] = {"conversations": [{"role": "robot", "content": "x"}]}
    path = _write(tmp_path / "p.jsonl", records)
    serial = prepare_splits(DataConfig(train_file=str(path), cache=False, skip_invalid=True, num_workers=1), tokenizer)
    parallel = prepare_splits(DataConfig(train_file=str(path), cache=False, skip_invalid=True, num_workers=2),
                              tokenizer)
    assert list(serial.train) == list(parallel.train) and len(serial.train) == 59
    assert serial.report.to_dict()["splits"] == parallel.report.to_dict()["splits"]


def test_config_checks():
    with pytest.raises(DataError, match="truncation"):
        DataConfig(truncation="left")
    with pytest.raises(DataError, match="max_seq_length"):
        DataConfig(max_seq_length=0)
    with pytest.raises(DataError, match="registry_file"):
        DataConfig(datasets=["a"])
    assert DataConfig(max_input_length=10, max_output_length=5).chat_length == 16


def test_cache_key_covers_template_tokenizer_format_and_columns(tmp_path, tokenizer, monkeypatch):
    from glmtune.data import cache
    from glmtune.data.registry import Source
    from glmtune.tokenizer import train_tokenizer

    path = _write(tmp_path / "k.jsonl", [{"content": "a", "summary": "b"}])
    src = [Source(path)]
    base = DataConfig(columns={"content": "user", "summary": "assistant"})
    key = cache.cache_key(src, base, tokenizer)
    assert key == cache.cache_key([Source(path)], DataConfig(columns={"content": "user", "summary": "assistant"}),
                                  tokenizer)
    assert key != cache.cache_key(src, DataConfig(columns={"content": "user", "summary": "assistant"},
                                                  format="columns"), tokenizer)
    assert key != cache.cache_key(src, DataConfig(columns={"content": "system", "summary": "assistant"}), tokenizer)
    assert key != cache.cache_key(src, DataConfig(columns=base.columns, skip_invalid=True), tokenizer)
    other = train_tokenizer(["hello world 你好 世界"] * 50, tmp_path / "tok", vocab_size=300)
    assert key != cache.cache_key(src, base, other)
    monkeypatch.setattr(cache, "template_version", lambda tok: "chatglm3:next")
    assert key != cache.cache_key(src, base, tokenizer)
    # The same tokenizer file under another family (ChatGLM2 and ChatGLM3 share it) is another cache.
    monkeypatch.setattr(cache, "template_version", lambda tok: "chatglm2:1")
    assert key != cache.cache_key(src, base, tokenizer)
