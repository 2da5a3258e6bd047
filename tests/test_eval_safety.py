"""``glmtune eval --out`` never overwrites its inputs, nor earlier results without --force."""

from __future__ import annotations

import json

from glmtune import cli
from test_infer_eval import RECORDS
from test_infer_trained import trained_chatbot


def _data(folder):
    folder.mkdir(exist_ok=True)
    path = folder / "predictions.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS)
    path.write_text(text)
    return path, text


def test_eval_refuses_out_that_overwrites_its_data(tmp_path, capsys):
    data, text = _data(tmp_path / "ev")
    code = cli.main(["eval", "--model", str(tmp_path / "no-model"), "--data", str(data), "--out", str(tmp_path / "ev"),
                     "--force"])
    assert code == 2 and data.read_text() == text
    err = capsys.readouterr().err
    assert "--out" in err and "is the input" in err and str(data) in err


def test_eval_refuses_out_symlinked_to_its_data(tmp_path, capsys):
    data, text = _data(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.jsonl").symlink_to(data)
    code = cli.main(["eval", "--model", str(tmp_path / "no-model"), "--data", str(data), "--out", str(out), "--force"])
    assert code == 2 and data.read_text() == text and "is the input" in capsys.readouterr().err


def test_eval_keeps_existing_results_without_force(tmp_path, capsys):
    data, _ = _data(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{\"mine\": 1}\n")
    code = cli.main(["eval", "--model", str(tmp_path / "no-model"), "--data", str(data), "--out", str(out)])
    assert code == 2 and (out / "metrics.json").read_text() == "{\"mine\": 1}\n"
    err = capsys.readouterr().err
    assert "metrics.json already exists" in err and "--force" in err


def test_eval_force_replaces_only_results(tmp_path, capsys):
    data, text = _data(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "user.json"
    elsewhere.write_text("user file\n")
    (out / "metrics.json").symlink_to(elsewhere)
    (out / "predictions.jsonl").write_text("old\n")
    (out / "notes.txt").write_text("keep\n")
    code = cli.main(["eval", "--model", str(trained_chatbot()[0]), "--data", str(data), "--out", str(out),
                     "--max-new-tokens", "8", "--max-samples", "2", "--force"])
    assert code == 0
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 2
    assert elsewhere.read_text() == "user file\n" and (out / "notes.txt").read_text() == "keep\n"
    assert data.read_text() == text
