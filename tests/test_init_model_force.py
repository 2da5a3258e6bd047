"""``glmtune init-model --force`` replaces only files glmtune wrote; a user's own files in --out survive."""

from __future__ import annotations

import json

from glmtune.cli import main


def test_init_model_force_keeps_user_files(tmp_path, chatglm3_dir, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / "pytorch_model.bin").write_bytes(b"user weights")
    (out / "notes.txt").write_text("my notes\n")
    args = ["init-model", "--shape", "tiny", "--tokenizer", str(chatglm3_dir), "--out", str(out), "--dtype", "fp32"]
    assert main(args) == 2  # not empty, no --force
    main(args + ["--force"])
    assert (out / "pytorch_model.bin").read_bytes() == b"user weights"
    assert (out / "notes.txt").read_text() == "my notes\n"


def test_init_model_force_replaces_its_own_files(tmp_path, chatglm3_dir, capsys):
    out = tmp_path / "m"
    args = ["init-model", "--shape", "tiny", "--tokenizer", str(chatglm3_dir), "--out", str(out), "--dtype", "fp32"]
    assert main(args) == 0
    written = json.loads((out / "glmtune_export.json").read_text())["files"]
    assert "config.json" in written and "tokenizer.model" in written
    (out / "notes.txt").write_text("mine\n")
    assert main(args + ["--seed", "1", "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine\n"
    assert json.loads((out / "glmtune_export.json").read_text())["files"] == written
