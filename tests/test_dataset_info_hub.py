"""dataset_info.json hub entries (hf_hub_url / ms_hub_url), the bundled registry against LLaMA-Factory's, old
ChatGLM-Efficient-Tuning entries. No network: the hub is unreachable here or replaced by a fake ``datasets``."""

from __future__ import annotations

import json
import sys
import types

import pytest

from glmtune.cli import main
from glmtune.data import DataConfig
from glmtune.data.dataset_info import bundled_registry
from glmtune.data.errors import DataError
from glmtune.data.pipeline import prepare_splits, split_sources

ROWS = [{"instruction": "Say red.", "input": "", "output": "red"},
        {"instruction": "Say blue.", "input": "", "output": "blue"}]


@pytest.fixture()
def hub_dir(tmp_path, monkeypatch):
    """A data folder whose dataset_info.json names a hub-only dataset; glmtune's cache in tmp."""
    (tmp_path / "dataset_info.json").write_text(json.dumps({"alpaca_zh": {
        "hf_hub_url": "llamafactory/alpaca_zh", "ms_hub_url": "llamafactory/alpaca_zh"}}))
    monkeypatch.setenv("GLMTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("USE_MODELSCOPE_HUB", raising=False)
    return tmp_path


def _fake_datasets(monkeypatch, load):
    """Install a stand-in for the optional ``datasets`` library whose load_dataset is ``load``."""
    module = types.ModuleType("datasets")
    module.load_dataset = load
    monkeypatch.setitem(sys.modules, "datasets", module)


def _sources(folder):
    return split_sources(DataConfig(registry_file="dataset_info.json", datasets=["alpaca_zh"]), folder)


def _cannot_download(folder, reason: str) -> str:
    return (f"{folder / 'dataset_info.json'}: dataset 'alpaca_zh': cannot download alpaca_zh from the hub "
            f"(hf_hub_url 'llamafactory/alpaca_zh': {reason}); place the file in {folder} and use file_name "
            "(add \"file_name\": \"FILE\" to the entry: JSON, JSON lines, CSV or parquet)")


def test_hub_entry_without_the_datasets_library_is_one_clear_error(hub_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(DataError) as err:
        _sources(hub_dir)
    assert str(err.value) == _cannot_download(
        hub_dir, "the optional `datasets` library is not installed: pip install 'glmtune[hub]'")


def test_hub_entry_with_the_hub_unreachable_is_one_clear_error(hub_dir, monkeypatch, capsys, chatglm3_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def offline(path, **kwargs):  # what datasets raises with no network / offline mode
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    _fake_datasets(monkeypatch, offline)
    expected = _cannot_download(hub_dir, "ConnectionError: Couldn't reach 'llamafactory/alpaca_zh' on the Hub "
                                         "(LocalEntryNotFoundError)")
    with pytest.raises(DataError) as err:
        _sources(hub_dir)
    assert str(err.value) == expected
    assert not (hub_dir / "cache" / "hub").exists() or not list((hub_dir / "cache" / "hub").iterdir())
    code = main(["data", "check", "--dataset", "alpaca_zh", "--dataset-dir", str(hub_dir), "--model", str(chatglm3_dir)])
    assert code == 2 and capsys.readouterr().err == f"glmtune: error: {expected}\n"


def test_hub_entry_downloads_once_and_encodes_as_the_same_local_file(hub_dir, monkeypatch, tokenizer):
    calls = []

    def load(path, **kwargs):
        calls.append((path, kwargs))
        return list(ROWS)

    _fake_datasets(monkeypatch, load)
    got = prepare_splits(DataConfig(data_dir=str(hub_dir), registry_file="dataset_info.json", datasets=["alpaca_zh"],
                                    cache=False), tokenizer)
    assert calls == [("llamafactory/alpaca_zh", {"name": None, "data_dir": None, "split": "train", "revision": None})]
    (hub_dir / "local.json").write_text(json.dumps(ROWS))
    local = prepare_splits(DataConfig(data_dir=str(hub_dir), train_file="local.json", cache=False), tokenizer)
    assert [r["input_ids"] for r in got.train] == [r["input_ids"] for r in local.train]
    assert [r["labels"] for r in got.train] == [r["labels"] for r in local.train]
    assert _sources(hub_dir)["train"][0].path.parent == hub_dir / "cache" / "hub" and len(calls) == 1  # cached


def test_hub_entry_reads_its_file_name_when_the_file_is_there(hub_dir, monkeypatch):
    _fake_datasets(monkeypatch, lambda *a, **k: pytest.fail("downloaded although the file is in the data folder"))
    (hub_dir / "dataset_info.json").write_text(json.dumps({"alpaca_zh": {
        "file_name": "alpaca_data_zh_51k.json", "hf_hub_url": "llamafactory/alpaca_zh"}}))
    (hub_dir / "alpaca_data_zh_51k.json").write_text(json.dumps(ROWS))
    assert _sources(hub_dir)["train"][0].path == hub_dir / "alpaca_data_zh_51k.json"


def test_hub_split_and_subset_reach_the_library(hub_dir, monkeypatch):
    calls = []
    _fake_datasets(monkeypatch, lambda path, **kw: calls.append(kw) or [{"content": "a", "summary": "b"}])
    (hub_dir / "dataset_info.json").write_text(json.dumps({"adgen_eval": {
        "hf_hub_url": "HasturOfficial/adgen", "split": "validation", "subset": "zh",
        "columns": {"prompt": "content", "response": "summary"}}}))
    split_sources(DataConfig(registry_file="dataset_info.json", datasets=["adgen_eval"]), hub_dir)
    assert calls == [{"name": "zh", "data_dir": None, "split": "validation", "revision": None}]


def test_chatglm_efficient_tuning_registry_entries_are_read(tmp_path, tokenizer):
    # ChatGLM-Efficient-Tuning's data/dataset_info.json: file_sha1, and "" for a column the file does not have.
    (tmp_path / "ad.json").write_text(json.dumps([{"input": "Say red.", "target": "red"}]))
    (tmp_path / "native.json").write_text(json.dumps([{"instruction": "Say red.", "output": "red"}]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"firefly_local": {
        "file_name": "ad.json", "file_sha1": "e655af3db557a4197f7b0cf92e1986b08fae6311",
        "columns": {"prompt": "input", "query": "", "response": "target", "history": ""}}}))
    ours = prepare_splits(DataConfig(data_dir=str(tmp_path), registry_file="dataset_info.json",
                                     datasets=["firefly_local"], cache=False), tokenizer)
    native = prepare_splits(DataConfig(data_dir=str(tmp_path), train_file="native.json", cache=False), tokenizer)
    assert [r["input_ids"] for r in ours.train] == [r["input_ids"] for r in native.train]


# LLaMA-Factory's data/dataset_info.json (hiyouga/LLaMA-Factory at d91d8af89e36, 2026-03-20), the entries the
# bundled registry carries. LLaMA-Factory downloads the hub sets, so they have no file_name there; glmtune's
# bundled entries add the name of the downloaded file (read from the data folder when present).
LLAMAFACTORY = {
    "identity": {"file_name": "identity.json"},
    "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
    "alpaca_zh_demo": {"file_name": "alpaca_zh_demo.json"},
    "glaive_toolcall_en_demo": {"file_name": "glaive_toolcall_en_demo.json", "formatting": "sharegpt",
                                "columns": {"messages": "conversations", "tools": "tools"}},
    "glaive_toolcall_zh_demo": {"file_name": "glaive_toolcall_zh_demo.json", "formatting": "sharegpt",
                                "columns": {"messages": "conversations", "tools": "tools"}},
    "alpaca_zh": {"hf_hub_url": "llamafactory/alpaca_zh", "ms_hub_url": "llamafactory/alpaca_zh"},
    "alpaca_gpt4_zh": {"hf_hub_url": "llamafactory/alpaca_gpt4_zh", "ms_hub_url": "llamafactory/alpaca_gpt4_zh",
                       "om_hub_url": "State_Cloud/alpaca-gpt4-data-zh"},
    "belle_2m": {"hf_hub_url": "BelleGroup/train_2M_CN", "ms_hub_url": "AI-ModelScope/train_2M_CN"},
    "belle_math": {"hf_hub_url": "BelleGroup/school_math_0.25M", "ms_hub_url": "AI-ModelScope/school_math_0.25M"},
    "firefly": {"hf_hub_url": "YeungNLP/firefly-train-1.1M", "columns": {"prompt": "input", "response": "target"}},
    "adgen_train": {"hf_hub_url": "HasturOfficial/adgen", "ms_hub_url": "AI-ModelScope/adgen", "split": "train",
                    "columns": {"prompt": "content", "response": "summary"}},
    "adgen_eval": {"hf_hub_url": "HasturOfficial/adgen", "ms_hub_url": "AI-ModelScope/adgen", "split": "validation",
                   "columns": {"prompt": "content", "response": "summary"}},
    "glaive_toolcall_zh": {"hf_hub_url": "llamafactory/glaive_toolcall_zh", "formatting": "sharegpt",
                           "columns": {"messages": "conversations", "tools": "tools"}},
}


def test_bundled_registry_matches_llamafactory_entries():
    bundled = json.loads(bundled_registry().read_text(encoding="utf-8"))
    for name, entry in LLAMAFACTORY.items():
        ours = dict(bundled[name])
        if "file_name" not in entry:
            assert ours.pop("file_name")  # glmtune's addition: where a downloaded copy is looked for
        assert ours == entry, name
    # ChatGLM3's AdvertiseGen names, the same sets as LLaMA-Factory's adgen_train / adgen_eval
    assert bundled["AdvertiseGen"] == bundled["adgen_train"] and bundled["AdvertiseGen_dev"] == bundled["adgen_eval"]
