"""Bad input is reported with file, line, what was expected and a fix; training refuses it unless told to skip."""

from __future__ import annotations

import json

import pytest

from glmtune.cli import main
from glmtune.data import DataConfig, DataError, prepare_splits
from glmtune.data.process import load_conversations

GOOD = {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
BAD_LINES = [  # (line text, kind, words the message must contain)
    ("{\"conversations\": [", "invalid_json", "invalid JSON"),
    (json.dumps({"conversations": [{"role": "user"}, {"role": "assistant", "content": "x"}]}), "missing_field",
     "'content'"),
    (json.dumps({"conversations": [{"role": "bot", "content": "x"}]}), "unknown_role", "unknown role 'bot'"),
    (json.dumps({"conversations": []}), "empty_conversation", "empty conversation"),
    (json.dumps({"conversations": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y",
                                                                      "loss": False}]}), "no_trainable",
     "no trainable message"),
    (json.dumps({"conversations": [{"role": "user", "content": "x"}, {"role": "tool", "parameters": {},
                                                                      "observation": "o"},
                                   {"role": "assistant", "content": "y"}]}), "tool_without_name", "no 'name'"),
    (json.dumps({"conversations": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}),
     "wrong_type", "is int"),
    (json.dumps({"conversations": "not a list"}), "wrong_type", "is str"),
    (json.dumps({"tools": [{"name": "track"}], "conversations": [
        {"role": "user", "content": "x"}, {"role": "tool", "name": "trak", "parameters": {}, "observation": "o"},
        {"role": "assistant", "content": "y"}]}), "unknown_tool", "'trak' is not among the defined tools (track)"),
]


@pytest.fixture()
def bad_file(tmp_path):
    lines = [json.dumps(GOOD)] + [text for text, _, _ in BAD_LINES] + [json.dumps(GOOD)]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_problem_is_located_and_explained(bad_file):
    convs, problems = load_conversations(bad_file, DataConfig(format="chatglm3"))
    assert len(convs) == 2
    assert [(p.line, p.kind) for p in problems] == [(i + 2, kind) for i, (_, kind, _) in enumerate(BAD_LINES)]
    for p, (_, _, words) in zip(problems, BAD_LINES):
        text = str(p)
        assert text.startswith(f"{bad_file}:{p.line}: ") and words in text
        assert "expected" in text and "fix" in text


def test_training_refuses_invalid_data_listing_all(bad_file, tokenizer):
    with pytest.raises(DataError) as err:
        prepare_splits(DataConfig(train_file=str(bad_file), cache=False), tokenizer)
    message = str(err.value)
    assert f"{len(BAD_LINES)} invalid records" in message and "skip_invalid" in message
    for line in range(2, 2 + len(BAD_LINES)):
        assert f"{bad_file}:{line}:" in message


def test_skip_invalid_reports_counts_and_reasons(bad_file, tokenizer):
    splits = prepare_splits(DataConfig(train_file=str(bad_file), cache=False, skip_invalid=True), tokenizer)
    report = splits.report.splits["train"]
    assert len(splits.train) == 2 and report.records == 2 + len(BAD_LINES)
    assert sum(report.skipped.values()) == len(BAD_LINES)
    assert report.skipped["wrong_type"] == 2 and report.skipped["unknown_role"] == 1
    assert f"skipped (invalid): {len(BAD_LINES)}" in splits.report.format()


def test_ambiguous_and_unknown_formats_are_user_errors(tmp_path, tokenizer):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b", "context": "c", "target": "d"}) + "\n")
    with pytest.raises(DataError, match="several formats: alpaca, base"):
        prepare_splits(DataConfig(train_file=str(path), cache=False), tokenizer)
    path.write_text(json.dumps({"foo": 1}) + "\n")
    with pytest.raises(DataError, match=r"cannot tell the data format.*--format"):
        prepare_splits(DataConfig(train_file=str(path), cache=False), tokenizer)
    with pytest.raises(DataError, match="unknown format 'yaml'.*chatglm3"):
        DataConfig(format="yaml")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        prepare_splits(DataConfig(train_file=str(tmp_path / "a.txt"), cache=False), tokenizer)


def test_broken_json_array_names_the_line(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n')
    convs, problems = load_conversations(path, DataConfig())
    assert len(convs) == 1 and problems[0].line == 3 and problems[0].kind == "invalid_json"


def test_cli_check_lists_all_problems_without_traceback(bad_file, capsys, chatglm3_dir):
    # In-process main(): an exception escaping it would be the traceback a user sees.
    assert main(["data", "check", str(bad_file), "--model", str(chatglm3_dir)]) == 1
    out, err = capsys.readouterr()
    assert len([ln for ln in err.splitlines() if ln.startswith(f"{bad_file}:")]) == len(BAD_LINES)
    assert "11 records -> 2 samples" in out and "9 invalid records" in out


def test_cli_user_errors_are_one_line(tmp_path, capsys, chatglm3_dir):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"foo": 1}) + "\n")
    assert main(["data", "encode", str(path), "--model", str(chatglm3_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("glmtune: error: ") and "cannot tell the data format" in err[0]
    assert main(["data", "check", str(tmp_path / "missing.jsonl"), "--model", str(chatglm3_dir)]) == 2
    assert "data file not found" in capsys.readouterr().err
