"""Bad input never loses data, never passes silently, never ends in a traceback (issues 8, 9 and 10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glmtune.cli import main
from glmtune.data import DataConfig, DataError, prepare_splits
from glmtune.data.errors import Problem
from glmtune.data.readers import raw_json_lines, read_records


def _lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _chat(user: str, answer: str) -> dict:
    return {"conversations": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


# -- reading -----------------------------------------------------------------------------------------------------
def test_json_lines_split_only_on_newline(tmp_path):
    text = "第一行\u2028第二行\u2029第三段\x85下一行"
    path = _lines(tmp_path / "d.jsonl", [_chat(text, "ok"), _chat("b", "c"), "{broken"])
    items = list(read_records(path))
    assert [i[0] for i in items[:2]] == [1, 2] and items[0][1]["conversations"][0]["content"] == text
    assert isinstance(items[2], Problem) and items[2].line == 3
    # the unparsed path that parallel encoding takes agrees
    assert [n for n, _ in raw_json_lines(path)] == [1, 2, 3]


def test_a_json_array_followed_by_more_json_is_an_error(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([_chat("a", "b")]) + "\n" + json.dumps([_chat("c", "d")]) + "\n")
    problems = [i for i in read_records(path) if isinstance(i, Problem)]
    assert len(problems) == 1 and problems[0].line == 2 and "more data after the closing ']'" in problems[0].problem


def test_a_csv_with_an_unclosed_quote_is_an_error_at_its_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('user,assistant\nhi,ok\n"a,b\nc,d\ne,f\n')
    items = list(read_records(path))
    assert items[0] == (2, {"user": "hi", "assistant": "ok"})
    assert len(items) == 2 and isinstance(items[1], Problem) and items[1].line == 3
    assert "not closed" in items[1].problem and items[1].file == str(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_100k_deep_json_is_a_located_problem(tmp_path, suffix):
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / f"d{suffix}"
    path.write_text(json.dumps(_chat("a", "b")) + "\n" + '{"conversations": ' + deep + "}\n")
    problems = [i for i in read_records(path) if isinstance(i, Problem)]
    assert len(problems) == 1 and problems[0].line == 2 and "nested too deeply" in problems[0].problem


def test_duplicate_keys_are_a_warning_naming_file_line_and_key(tmp_path, tokenizer, capsys, chatglm3_dir):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(_chat("a", "b")) + "\n"
                    + '{"conversations": [{"role": "user", "content": "x", "content": "y"}, '
                      '{"role": "assistant", "content": "z"}]}\n')
    assert main(["data", "check", str(path), "--model", str(chatglm3_dir)]) == 0
    err = capsys.readouterr().err
    assert f"{path}:2: warning: duplicate key 'content'" in err


def test_tools_that_are_not_objects_are_an_error(tmp_path):
    from glmtune.data.process import load_conversations

    path = _lines(tmp_path / "d.jsonl", [{**_chat("a", "b"), "tools": [1, 2]},
                                         {**_chat("a", "b"), "tools": ["a tool described in words"]}])
    convs, problems = load_conversations(path, DataConfig())
    assert len(convs) == 1 and convs[0].tools == ["a tool described in words"]  # the official demo's own style
    assert len(problems) == 1 and problems[0].line == 1 and "tools[0] is int" in problems[0].problem


# -- parquet ---------------------------------------------------------------------------------------------------
def test_parquet_tool_calls_with_different_parameters_give_the_jsonl_ids(tmp_path, tokenizer):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from glmtune.data.process import process_source
    from glmtune.data.registry import Source

    def tool(params):
        return {"conversations": [{"role": "user", "content": "weather?"},
                                  {"role": "tool", "name": "w", "parameters": params, "observation": "sunny"},
                                  {"role": "assistant", "content": "sunny"}]}

    records = [tool({"city": "Paris"}), tool({"city": "Rome", "zone": "CET"})]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    _lines(tmp_path / "d.jsonl", records)
    back = [r for _, r in read_records(tmp_path / "d.parquet")]
    assert back[0]["conversations"][1]["parameters"] == {"city": "Paris"}  # no invented zone=None
    cfg = DataConfig(cache=False)
    a = process_source(Source(tmp_path / "d.parquet"), cfg, tokenizer).dataset
    b = process_source(Source(tmp_path / "d.jsonl"), cfg, tokenizer).dataset
    assert [r["input_ids"] for r in a] == [r["input_ids"] for r in b] and len(a) == 2


# -- outputs and reports ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["same", "symlink", "relative"])
def test_encode_refuses_to_write_over_its_input(tmp_path, capsys, monkeypatch, how, chatglm3_dir):
    path = _lines(tmp_path / "d.jsonl", [_chat("a", "b")])
    before = path.read_bytes()
    out = {"same": str(path), "symlink": str(tmp_path / "link.jsonl"), "relative": "./d.jsonl"}[how]
    if how == "symlink":
        (tmp_path / "link.jsonl").symlink_to(path)
    monkeypatch.chdir(tmp_path)
    assert main(["data", "encode", str(path), "--model", str(chatglm3_dir), "-o", out]) == 2
    assert "would overwrite your data" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_an_identical_file_elsewhere_gets_its_own_report(tmp_path, tokenizer):
    rows = [_chat("a", "b"), {"conversations": "not a list"}]
    first, second = tmp_path / "one" / "d.jsonl", tmp_path / "two" / "d.jsonl"
    for p in (first, second):
        p.parent.mkdir()
        _lines(p, rows)
    reports = []
    for p in (first, second):
        cfg = DataConfig(train_file=str(p), skip_invalid=True, cache_dir=str(tmp_path / "cache"))
        reports.append(prepare_splits(cfg, tokenizer).report)
    assert list(reports[1].splits["train"].formats) == [str(second)]
    assert reports[1].splits["train"].examples[0].startswith(f"{second}:2:")
    assert json.dumps(reports[1].to_dict()).count(str(first)) == 0


def test_data_check_names_records_dropped_for_length(tmp_path, capsys, chatglm3_dir):
    path = _lines(tmp_path / "d.jsonl", [_chat("hi", "ok"), _chat("x " * 300, "y")])
    assert main(["data", "check", str(path), "--model", str(chatglm3_dir), "--max-input-length", "20",
                 "--max-output-length", "20"]) == 0
    captured = capsys.readouterr()
    assert f"{path}:2: warning: dropped (no_labels_after_truncation)" in captured.err
    assert "would be truncated at these lengths (chat cap 41 tokens): 1" in captured.out


def test_a_column_mapping_naming_an_absent_column_says_which(tmp_path, tokenizer):
    path = _lines(tmp_path / "d.jsonl", [{"content": "a", "summery": "b"}])
    cfg = DataConfig(train_file=str(path), columns={"content": "user", "summary": "assistant"}, cache=False)
    with pytest.raises(DataError, match=r"names column 'summary', which the file does not have "
                                        r"\(its columns: 'content', 'summery'"):
        prepare_splits(cfg, tokenizer)


def test_a_registry_entry_with_a_missing_file_names_the_dataset(tmp_path):
    from glmtune.data.pipeline import split_sources

    (tmp_path / "reg.json").write_text(json.dumps({"mine": {"file": "gone.jsonl"}}))
    cfg = DataConfig(registry_file="reg.json", datasets=["mine"])
    with pytest.raises(DataError, match=r"dataset 'mine': its file .*gone.jsonl does not exist"):
        split_sources(cfg, tmp_path)


@pytest.mark.parametrize("command", ["check", "preview", "encode"])
def test_data_commands_given_a_hub_id_say_glmtune_never_downloads(tmp_path, capsys, command):
    path = _lines(tmp_path / "d.jsonl", [_chat("a", "b")])
    assert main(["data", command, str(path), "--model", "THUDM/chatglm3-6b"]) == 2
    err = capsys.readouterr().err
    assert "glmtune does not download models" in err and "huggingface-cli download THUDM/chatglm3-6b" in err


# -- one loader (issue 10) ---------------------------------------------------------------------------------------
def test_skip_invalid_validation_records_are_left_out_of_generation_eval(tmp_path, tokenizer):
    """The path training takes: prepare_splits, then ``splits.conversations("validation")`` for generation eval."""
    train = _lines(tmp_path / "train.jsonl", [_chat("a", "b")])
    val = _lines(tmp_path / "dev.jsonl", [[1, 2], _chat("q1", "r1"), "{broken",
                                          {"conversations": [{"role": "user", "content": "only a question"}]},
                                          _chat("q2", "r2")])
    cfg = DataConfig(train_file=str(train), val_file=str(val), skip_invalid=True, cache=False)
    splits = prepare_splits(cfg, tokenizer)
    assert len(splits.validation) == 2
    convs = splits.conversations("validation")
    assert [(c.line, c.messages[-1].content) for c in convs] == [(2, "r1"), (5, "r2")]
    assert not hasattr(splits, "eval_prompts")


def test_a_training_run_with_skip_invalid_evaluates_only_the_valid_validation_records(tmp_path):
    """End to end: the run's generation eval reads the validation split with the same loader (no crash)."""
    from glmtune.config import load_config
    from glmtune.tokenizer import train_tokenizer
    from glmtune.train import run_training

    rows = [_chat(f"question {i}?", f"answer {i}.") for i in range(4)]
    train_tokenizer([m["content"] for r in rows for m in r["conversations"]] * 8, tmp_path / "tok", vocab_size=300)
    _lines(tmp_path / "train.jsonl", rows)
    _lines(tmp_path / "dev.jsonl", [[1, 2], rows[0], "{broken", rows[1]])
    cfg = load_config({
        "model": {"path": "tiny", "tokenizer": str(tmp_path / "tok"), "device": "cpu"},
        "data": {"train_file": "train.jsonl", "val_file": "dev.jsonl", "data_dir": str(tmp_path),
                 "skip_invalid": True, "max_input_length": 16, "max_output_length": 16, "cache": False},
        "method": {"name": "lora"},
        "training": {"max_steps": 1, "batch_size": 2, "logging_steps": 1, "save_steps": 0, "tensorboard": False},
        "evaluation": {"strategy": "steps", "steps": 1, "max_new_tokens": 2},
        "output": {"dir": str(tmp_path / "out"), "plots": False},
    })
    run_training(cfg, quiet=True)
    preds = [json.loads(x) for x in next((tmp_path / "out" / "eval").rglob("predictions.jsonl")).read_text()
             .splitlines()]
    assert [p["source"] for p in preds] == [f"{tmp_path / 'dev.jsonl'}:2", f"{tmp_path / 'dev.jsonl'}:4"]
