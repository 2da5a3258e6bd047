"""LLaMA-Factory dataset_info.json entries, the bundled registry, val_size and max_samples."""

from __future__ import annotations

import json
import sys

import pytest

from glmtune.cli import main
from glmtune.data import DataConfig
from glmtune.data.errors import DataError
from glmtune.data.pipeline import prepare_splits, split_sources

WEATHER = {"name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def _write(path, records) -> None:
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")


def _encoded(folder, tokenizer, **data) -> list[tuple[list[int], list[int]]]:
    splits = prepare_splits(DataConfig(data_dir=str(folder), cache=False, **data), tokenizer)
    return [(row["input_ids"], row["labels"]) for row in splits.train]


def _same_encoding(tmp_path, tokenizer, entry: dict, lf_records: list, native_format: str, native: list) -> None:
    _write(tmp_path / "lf.json", lf_records)
    _write(tmp_path / "native.json", native)
    (tmp_path / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "lf.json", **entry}}))
    lf = _encoded(tmp_path, tokenizer, registry_file="dataset_info.json", datasets=["mine"])
    ours = _encoded(tmp_path, tokenizer, train_file="native.json", format=native_format)
    assert len(lf) == len(native) and lf == ours


def test_alpaca_entry_with_columns_encodes_as_native_alpaca(tmp_path, tokenizer):
    entry = {"columns": {"prompt": "question", "query": "context", "response": "answer", "system": "sys",
                         "history": "turns"}}
    lf = [{"question": "Translate", "context": "bonjour", "answer": "hello", "sys": "Be brief.",
           "turns": [["hi", "hey"]]},
          {"question": "2+2?", "context": "", "answer": "4", "sys": "", "turns": []}]
    native = [{"instruction": "Translate", "input": "bonjour", "output": "hello", "system": "Be brief.",
               "history": [["hi", "hey"]]},
              {"instruction": "2+2?", "input": "", "output": "4", "system": "", "history": []}]
    _same_encoding(tmp_path, tokenizer, entry, lf, "alpaca", native)


def test_alpaca_entry_without_columns_is_alpaca_by_default(tmp_path, tokenizer):
    native = [{"instruction": "Say hi", "input": "", "output": "hi"}]
    _same_encoding(tmp_path, tokenizer, {}, native, "alpaca", native)


def test_sharegpt_entry_with_tags_encodes_as_native_sharegpt(tmp_path, tokenizer):
    # LLaMA-Factory's data/README.md "OpenAI format" entry: role/content keys, user/assistant/system values.
    entry = {"formatting": "sharegpt", "columns": {"messages": "messages"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                      "system_tag": "system"}}
    lf = [{"messages": [{"role": "system", "content": "You are kind."}, {"role": "user", "content": "Hello"},
                        {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Bye"},
                        {"role": "assistant", "content": "Bye!"}]}]
    native = [{"conversations": [{"from": "system", "value": "You are kind."}, {"from": "human", "value": "Hello"},
                                 {"from": "gpt", "value": "Hi!"}, {"from": "human", "value": "Bye"},
                                 {"from": "gpt", "value": "Bye!"}]}]
    _same_encoding(tmp_path, tokenizer, entry, lf, "sharegpt", native)


def test_custom_role_values_are_mapped_and_unknown_ones_refused(tmp_path, tokenizer):
    entry = {"formatting": "sharegpt", "columns": {"messages": "dialog"},
             "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "Q", "assistant_tag": "A"}}
    lf = [{"dialog": [{"speaker": "Q", "text": "Hello"}, {"speaker": "A", "text": "Hi"}]}]
    native = [{"conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi"}]}]
    _same_encoding(tmp_path, tokenizer, entry, lf, "sharegpt", native)
    _write(tmp_path / "lf.json", [{"dialog": [{"speaker": "Q", "text": "Hello"}, {"speaker": "B", "text": "Hi"}]}])
    with pytest.raises(DataError, match=r"lf.json:1: .*unknown role 'B'"):
        _encoded(tmp_path, tokenizer, registry_file="dataset_info.json", datasets=["mine"])


def _tool_records(tags: dict) -> list:
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
    return [{"conversations": [{"from": tags.get("user_tag", "human"), "value": "Weather in Paris?"},
                               {"from": tags.get("function_tag", "function_call"), "value": call},
                               {"from": tags.get("observation_tag", "observation"), "value": '{"temp": 21}'},
                               {"from": tags.get("assistant_tag", "gpt"), "value": "21 degrees."}],
             "tools": json.dumps([WEATHER])}]


@pytest.mark.parametrize("tags", [{}, {"function_tag": "call", "observation_tag": "result", "user_tag": "u",
                                       "assistant_tag": "a"}])
def test_tool_calling_sharegpt_entry_encodes_as_native_chatglm3(tmp_path, tokenizer, tags):
    # LLaMA-Factory's glaive_toolcall_*_demo entries (tools as a JSON string, calls as JSON name/arguments).
    entry = {"formatting": "sharegpt", "columns": {"messages": "conversations", "tools": "tools"},
             **({"tags": tags} if tags else {})}
    native = [{"tools": [WEATHER],
               "conversations": [{"role": "user", "content": "Weather in Paris?"},
                                 {"role": "tool", "name": "get_weather", "parameters": {"city": "Paris"},
                                  "observation": '{"temp": 21}'},
                                 {"role": "assistant", "content": "21 degrees."}]}]
    _same_encoding(tmp_path, tokenizer, entry, _tool_records(tags), "chatglm3", native)


@pytest.mark.parametrize("entry, message", [
    ({"file_name": "d.json", "ranking": True, "formatting": "sharegpt",
      "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
     r"'d' is a preference dataset \(ranking: true\): reward modeling and DPO"),
    ({"script_url": "belle_multiturn"}, r"cannot download d from the hub \(script_url 'belle_multiturn': glmtune "
                                        r"reads only the Hugging Face and ModelScope hubs\); place the file in"),
    ({"file_name": "d.json", "columns": {"prompt": "q", "images": "img"}}, r"column 'images' is not supported: .*text"),
    ({"file_name": "d.json", "columns": {"messages": "c"}}, r"column 'messages' does not apply to alpaca formatting"),
    ({"file_name": "d.json", "formatting": "sharegpt", "tags": {"role_tg": "r"}}, r"unknown tag 'role_tg'"),
    ({"file_name": "d.json", "num_samples": 10}, r"num_samples is not supported; sample with a ratio"),
    ({"file_name": "d.json", "formating": "sharegpt"}, r"unknown key 'formating'; did you mean 'formatting'"),
])
def test_unsupported_entries_are_refused_with_the_reason(tmp_path, entry, message):
    _write(tmp_path / "d.json", [{"instruction": "a", "output": "b"}])
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": entry}))
    with pytest.raises(DataError, match=message):
        split_sources(DataConfig(registry_file="dataset_info.json", datasets=["d"]), tmp_path)


def test_glmtune_registry_columns_keep_their_direction(tmp_path, tokenizer):
    _write(tmp_path / "ad.json", [{"content": "type#dress", "summary": "A dress."}])
    (tmp_path / "reg.json").write_text(json.dumps({"ad": {"file": "ad.json", "format": "columns",
                                                          "columns": {"content": "user", "summary": "assistant"}}}))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"ad": {"file_name": "ad.json", "columns": {
        "prompt": "content", "response": "summary"}}}))
    ours = _encoded(tmp_path, tokenizer, registry_file="reg.json", datasets=["ad"])
    assert ours == _encoded(tmp_path, tokenizer, registry_file="dataset_info.json", datasets=["ad"])


def test_bundled_registry_names_public_sets_and_finds_files_in_the_data_folder(tmp_path, tokenizer, monkeypatch):
    from glmtune.data.dataset_info import bundled_registry

    bundled = json.loads(bundled_registry().read_text(encoding="utf-8"))
    for name in ("alpaca_zh", "belle_2m", "firefly", "AdvertiseGen", "identity", "glaive_toolcall_zh_demo"):
        assert name in bundled
    (tmp_path / "AdvertiseGen").mkdir()
    (tmp_path / "AdvertiseGen" / "train.json").write_text('{"content": "type#dress", "summary": "A dress."}\n')
    _write(tmp_path / "native.json", [{"instruction": "type#dress", "output": "A dress."}])
    got = _encoded(tmp_path, tokenizer, registry_file="bundled", datasets=["AdvertiseGen"])
    assert got == _encoded(tmp_path, tokenizer, train_file="native.json")
    monkeypatch.setitem(sys.modules, "datasets", None)  # the optional hub library, absent
    monkeypatch.setenv("GLMTUNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"'firefly': cannot download firefly from the hub \(hf_hub_url 'YeungNLP/"
                                        r"firefly-train-1.1M': .*\); place the file in .* \(this entry reads "
                                        r".*firefly-train-1.1M.jsonl\)"):
        split_sources(DataConfig(registry_file="bundled", datasets=["firefly"]), tmp_path)


# -- val_size / max_samples -------------------------------------------------------
def _rows(n: int) -> list:
    return [{"instruction": f"Question number {i}", "output": f"Answer {i}"} for i in range(n)]


def _split(folder, tokenizer, **data) -> tuple[list[str], list[str]]:
    splits = prepare_splits(DataConfig(data_dir=str(folder), cache=False, **data), tokenizer)
    texts = [[m.content for m in c.messages][0] for c in splits.conversations("train")], \
        [[m.content for m in c.messages][0] for c in splits.conversations("validation")]
    assert (len(splits.train), len(splits.validation or [])) == tuple(map(len, texts))
    return texts


@pytest.mark.parametrize("val_size, held", [(0.1, 5), (0.25, 12), (7, 7)])
def test_val_size_split_is_deterministic_and_disjoint(tmp_path, tokenizer, val_size, held):
    _write(tmp_path / "d.json", _rows(48))
    train, val = _split(tmp_path, tokenizer, train_file="d.json", val_size=val_size)
    assert len(val) == held and len(train) == 48 - held  # a fraction rounds up, as datasets.train_test_split
    assert not set(train) & set(val) and sorted(train + val) == sorted(r["instruction"] for r in _rows(48))
    assert _split(tmp_path, tokenizer, train_file="d.json", val_size=val_size) == (train, val)
    other = _split(tmp_path, tokenizer, train_file="d.json", val_size=val_size, seed=1)
    assert other[1] != val and len(other[1]) == held


def test_val_size_with_oversampled_registry_datasets_never_overlaps(tmp_path, tokenizer):
    _write(tmp_path / "a.json", _rows(20))
    _write(tmp_path / "b.json", [{"instruction": f"Other {i}", "output": "x"} for i in range(10)])
    (tmp_path / "dataset_info.json").write_text(json.dumps({"a": {"file_name": "a.json"},
                                                            "b": {"file_name": "b.json"}}))
    train, val = _split(tmp_path, tokenizer, registry_file="dataset_info.json", datasets=["a:2", "b"], val_size=0.2)
    assert len(val) == 4 + 2 and len(train) == 16 * 2 + 8
    assert not set(train) & set(val)


def test_val_size_errors(tmp_path, tokenizer):
    _write(tmp_path / "d.json", _rows(5))
    _write(tmp_path / "e.json", _rows(5))
    with pytest.raises(DataError, match="val_size and data.val_file are both set"):
        DataConfig(train_file="d.json", val_file="e.json", val_size=0.1)
    for bad in (0, -1, 1.5, "a", True):
        with pytest.raises(DataError, match="data.val_size"):
            DataConfig(train_file="d.json", val_size=bad)
    with pytest.raises(DataError, match=r"val_size 5 holds out 5 of 5 records, leaving no training"):
        _split(tmp_path, tokenizer, train_file="d.json", val_size=5)
    with pytest.raises(DataError, match="a record count needs a single training file"):
        _split(tmp_path, tokenizer, train_file="d.json", train_files=["e.json"], val_size=2)


def test_max_samples_keeps_the_first_records_of_each_dataset(tmp_path, tokenizer):
    _write(tmp_path / "d.json", _rows(10))
    _write(tmp_path / "e.json", _rows(3))
    train, val = _split(tmp_path, tokenizer, train_file="d.json", train_files=["e.json"], max_samples=4)
    assert train == [f"Question number {i}" for i in (0, 1, 2, 3, 0, 1, 2)] and val == []
    train, val = _split(tmp_path, tokenizer, train_file="d.json", max_samples=4, val_size=0.5)
    assert sorted(train + val) == [f"Question number {i}" for i in range(4)] and len(val) == 2
    with pytest.raises(DataError, match="max_samples"):
        DataConfig(train_file="d.json", max_samples=0)


def test_data_check_reads_datasets_by_name(tmp_path, chatglm3_dir, capsys, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "identity.json", _rows(3))
    _write(data / "tools.json", _tool_records({}))
    (data / "dataset_info.json").write_text(json.dumps({"tools": {
        "file_name": "tools.json", "formatting": "sharegpt", "columns": {"messages": "conversations",
                                                                        "tools": "tools"}}}))
    monkeypatch.chdir(tmp_path)
    assert main(["data", "check", "--dataset", "tools", "--model", str(chatglm3_dir)]) == 0
    out = capsys.readouterr().out
    assert "1 records -> 1 samples" in out and "1 tool calls" in out and "sharegpt (" in out
    (data / "dataset_info.json").unlink()  # identity then comes from the bundled registry, its file from data/
    assert main(["data", "check", "--dataset", "identity", "--model", str(chatglm3_dir)]) == 0
    assert "3 records -> 3 samples" in capsys.readouterr().out
