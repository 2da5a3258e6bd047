"""``glmtune data encode`` reproduces the official encodings; ``preview`` shows the sanity-check table."""

from __future__ import annotations

import json

from conftest import ENCODINGS, TINY, need_fixtures
from glmtune.cli import main


def _encode(tmp_path, capsys, record, *args, model=TINY):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["data", "encode", str(path), "--model", str(model), "-o", str(out), *args]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 1
    return rows[0]


def test_encode_reproduces_every_reference_case(tmp_path, capsys):
    need_fixtures()
    cases = [json.loads(x) for x in ENCODINGS.read_text().splitlines()]
    assert len(cases) == 7
    for case in cases:
        if case["kind"] == "chat":
            row = _encode(tmp_path, capsys, case["input"])
            assert row == {"input_ids": case["input_ids"], "labels": case["labels"]}, case["name"]
        elif case["kind"] == "base":
            row = _encode(tmp_path, capsys, case["input"], "--max-input-length", str(case["max_source"]),
                          "--max-output-length", str(case["max_target"]))
            assert row == {"input_ids": case["input_ids"], "labels": case["labels"]}, case["name"]
        else:
            conv = case["input"]["history"] + [{"role": "user", "content": case["input"]["query"]}]
            row = _encode(tmp_path, capsys, {"conversations": conv}, "--for-generation")
            assert row == {"input_ids": case["input_ids"]}, case["name"]


def test_encode_to_stdout_with_format_and_columns(tmp_path, capsys, chatglm3_dir):
    path = tmp_path / "adv.json"
    path.write_text(json.dumps({"content": "类型#裙", "summary": "好看"}, ensure_ascii=False) + "\n")
    assert main(["data", "encode", str(path), "--model", str(chatglm3_dir / "tokenizer.model"),
                 "--columns", "content=user,summary=assistant"]) == 0
    row = json.loads(capsys.readouterr().out)
    from glmtune import load_tokenizer
    from glmtune.data import Conversation, Message, encode_chat

    tok = load_tokenizer(chatglm3_dir)
    ids, labels = encode_chat(Conversation([Message("user", "类型#裙"), Message("assistant", "好看")]), tok)
    assert row == {"input_ids": ids, "labels": labels}
    assert tok.decode(ids).startswith("[gMASK]sop<|user|>") and ids[-1] == tok.eos_token_id


def test_preview_prints_token_id_label_table(tmp_path, capsys, chatglm3_dir):
    path = tmp_path / "p.jsonl"
    conv = {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    path.write_text(json.dumps(conv) + "\n" + json.dumps(conv) + "\n")
    assert main(["data", "preview", str(path), "--model", str(chatglm3_dir), "-n", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"--> {path}:1")
    from glmtune import load_tokenizer

    assistant = load_tokenizer(chatglm3_dir).role_id("assistant")
    assert f"'<|assistant|>': {assistant} -> -100" in [x.strip() for x in out]
    assert out[-1].strip().endswith(": 2 -> 2")  # eos learned after the answer
    assert sum(x.startswith("-->") for x in out) == 1


def test_encode_for_generation_drops_trailing_answer(tmp_path, capsys, chatglm3_dir):
    from glmtune import load_tokenizer
    from glmtune.data import build_prompt

    conv = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    row = _encode(tmp_path, capsys, {"conversations": conv}, "--for-generation", model=chatglm3_dir)
    assert row == {"input_ids": build_prompt(conv[:1], load_tokenizer(chatglm3_dir))}


def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("glmtune: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_corrupt_parquet_is_one_line_error_naming_the_file(tmp_path, capsys, chatglm3_dir):
    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    for argv in (["data", "check", str(bad)], ["data", "preview", str(bad)]):
        err = _one_line_error(capsys, [*argv, "--model", str(chatglm3_dir)])
        assert str(bad) in err and "parquet" in err


def test_missing_pyarrow_is_one_line_error(tmp_path, capsys, monkeypatch, chatglm3_dir):
    import sys

    path = tmp_path / "train.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    err = _one_line_error(capsys, ["data", "check", str(path), "--model", str(chatglm3_dir)])
    assert str(path) in err and "pip install pyarrow" in err


_GOOD = json.dumps({"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})


def test_check_empty_file_is_an_error_naming_it(tmp_path, capsys, chatglm3_dir):
    for name, text in (("empty.jsonl", ""), ("blank.json", "\n\n"), ("array.json", "[]"), ("header.csv", "a,b\n")):
        path = tmp_path / name
        path.write_text(text)
        err = _one_line_error(capsys, ["data", "check", str(path), "--model", str(chatglm3_dir)])
        assert str(path) in err and "no records" in err


def test_check_takes_a_data_folder_and_checks_every_file(tmp_path, capsys, chatglm3_dir):
    folder = tmp_path / "AdvertiseGen"
    folder.mkdir()
    (folder / "train.json").write_text(_GOOD + "\n" + _GOOD + "\n")
    (folder / "dev.json").write_text(_GOOD + "\n" + '{"conversations": [{"role": "bot", "content": "x"}]}\n')
    (folder / "README.md").write_text("not data")
    assert main(["data", "check", str(folder), "--model", str(chatglm3_dir)]) == 1
    captured = capsys.readouterr()
    assert f"{folder / 'dev.json'}:2:" in captured.err and "unsupported file type" not in captured.err
    assert "1 invalid record" in captured.out
    (folder / "dev.json").write_text(_GOOD + "\n")
    assert main(["data", "check", str(folder), "--model", str(chatglm3_dir)]) == 0
    assert "all records are valid" in capsys.readouterr().out
    # preview/encode take one file: a folder with several names them.
    err = _one_line_error(capsys, ["data", "preview", str(folder), "--model", str(chatglm3_dir)])
    assert "dev.json" in err and "train.json" in err and "pass one of them" in err
    (folder / "dev.json").unlink()
    assert main(["data", "encode", str(folder), "--model", str(chatglm3_dir), "-o", str(tmp_path / "o.jsonl")]) == 0
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 2
    empty = tmp_path / "nothing"
    empty.mkdir()
    err = _one_line_error(capsys, ["data", "check", str(empty), "--model", str(chatglm3_dir)])
    assert str(empty) in err and "no data files" in err
