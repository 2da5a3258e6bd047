"""``glmtune export`` never loses the user's files: --force replaces only its own, inputs are never outputs."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from glmtune import cli, load_model, save_model
from glmtune.export import export_model


def cli_error(capsys, *args) -> str:
    code = cli.main(["export", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("glmtune: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.fixture()
def lora(tmp_path):
    from glmtune.methods import prepare

    prepared = prepare(load_model("tiny", dtype="fp32"), "lora", {"r": 2, "alpha": 4})
    prepared.save(tmp_path / "lora")
    return tmp_path / "lora"


def test_force_replaces_only_a_previous_exports_files(tmp_path, capsys, chatglm3_dir):
    out = tmp_path / "out"
    out.mkdir()
    mine = {"pytorch_model.bin": b"the user's own weights", "notes.md": b"keep",
            "model-00001-of-00007.safetensors": b"another tool's shard"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    args = ["export", "--model", str(chatglm3_dir), "--out", str(out), "--force"]
    assert cli.main([*args, "--max-shard-size", "3MB"]) == 0
    manifest = json.loads((out / "glmtune_export.json").read_text())
    shards = [n for n in manifest["files"] if n.startswith("model-")]
    assert len(shards) > 1 and "model.safetensors.index.json" in manifest["files"]
    assert all((out / name).read_bytes() == data for name, data in mine.items())
    # A second export with another shard count replaces the first one's files, and only them.
    assert cli.main(args) == 0
    assert "replaced from the previous glmtune export" in capsys.readouterr().out
    assert not any((out / name).exists() for name in [*shards, "model.safetensors.index.json"])
    assert (out / "model.safetensors").is_file()
    assert all((out / name).read_bytes() == data for name, data in mine.items())
    assert not [p for p in out.iterdir() if p.name.startswith(".glmtune-export-")]
    ids = torch.tensor([[64790, 64792, 64795, 30910, 13, 36474, 54591]])
    with torch.no_grad():
        assert torch.equal(load_model(out, dtype="fp32")(input_ids=ids).logits,
                           load_model(chatglm3_dir, dtype="fp32")(input_ids=ids).logits)


def test_force_never_overwrites_a_file_it_did_not_write(tmp_path, capsys, chatglm3_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{\"mine\": true}")
    before = listing(out)
    err = cli_error(capsys, "--model", str(chatglm3_dir), "--out", str(out), "--force")
    assert "config.json" in err and "not written by a glmtune export" in err
    assert listing(out) == before and (out / "config.json").read_text() == "{\"mine\": true}"


@pytest.mark.parametrize("where", ["model", "inside-model", "adapter", "inside-adapter", "around-adapter"])
def test_out_is_never_an_input_or_around_one(tmp_path, lora, capsys, where):
    base = tmp_path / "base"
    save_model(load_model("tiny", dtype="fp32"), base)
    out = {"model": base, "inside-model": base / "merged", "adapter": lora,
           "inside-adapter": lora / "official", "around-adapter": tmp_path}[where]
    before = listing(tmp_path)
    err = cli_error(capsys, "--model", str(base), "--adapter", str(lora), "--out", str(out), "--adapter-only",
                    "--force")
    assert "never writes into its inputs" in err and str(out) in err
    assert listing(tmp_path) == before


def test_exported_files_get_umask_permissions_and_user_files_keep_theirs(tmp_path, lora):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "official"
        out.mkdir()
        (out / "private.txt").write_text("secret")
        os.chmod(out / "private.txt", 0o600)
        result = export_model("tiny", out, adapter=lora, adapter_only=True, force=True)
    finally:
        os.umask(previous)
    assert "adapter_model.safetensors" in result.files
    for name in result.files:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE((out / "private.txt").stat().st_mode) == 0o600


def test_merged_weights_get_umask_permissions(tmp_path, chatglm3_dir):
    previous = os.umask(0o027)
    try:
        out = export_model(chatglm3_dir, tmp_path / "out", max_shard_bytes=3_000_000).out_dir
    finally:
        os.umask(previous)
    weights = list(out.glob("*.safetensors"))
    assert len(weights) > 1
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o640 for p in out.iterdir())


def test_a_failed_write_leaves_the_folder_as_it_was(tmp_path, lora, monkeypatch, capsys):
    import glmtune.export as export

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("keep")
    before = listing(out)

    def disk_full(model_path, adapter, stage, *args):
        (stage / "adapter_model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_export_official_adapter", disk_full)
    err = cli_error(capsys, "--model", "tiny", "--adapter", str(lora), "--out", str(out), "--adapter-only", "--force")
    assert "No space left on device" in err and str(out) in err
    assert listing(out) == before
    err = cli_error(capsys, "--model", "tiny", "--adapter", str(lora), "--out", str(tmp_path / "new"), "--adapter-only")
    assert not (tmp_path / "new").exists()
