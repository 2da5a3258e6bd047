"""``glmtune export``: merged == unmerged, both layouts, official adapters, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, need_fixtures
from glmtune import cli, load_model
from glmtune.export import ExportError, export_model, parse_size

def stop_ids(model_dir) -> list[int]:
    """eos, <|user|>, <|observation|> of the folder's tokenizer ([2, 64795, 64797] for ChatGLM3's)."""
    from glmtune import load_tokenizer

    return load_tokenizer(model_dir).stop_ids


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def prompt_ids():
    if (TINY / "reference.safetensors").is_file():
        return load_file(str(TINY / "reference.safetensors"))["single_input_ids"]
    return torch.tensor([[5, 17, 42, 99, 256, 511, 7, 1000]])  # any ids: the in-process model has the same vocabulary


def make_adapter(out_dir, base=TINY, **options):
    """A LoRA adapter on ``base`` (the tiny fixture) with non-zero B (a fresh adapter would be the identity)."""
    from glmtune.methods import prepare

    prepared = prepare(load_model(base, dtype="fp32"), "lora", {"r": 4, "alpha": 8, "target": "all-linear", **options})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in prepared.model.named_parameters():
            if "lora_" in name or "magnitude" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    prepared.save(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, chatglm3_dir):
    return make_adapter(tmp_path_factory.mktemp("lora"), base=chatglm3_dir)


def test_merged_native_export_matches_adapter_and_loads_in_plain_transformers(adapter, prompt_ids, tmp_path,
                                                                              chatglm3_dir):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    code = cli.main(["export", "--model", str(chatglm3_dir), "--adapter", str(adapter), "--out", str(out),
                     "--dtype", "fp32", "--max-shard-size", "3MB"])
    assert code == 0
    expected = logits(load_model(chatglm3_dir, dtype="fp32", adapter=adapter), prompt_ids)
    base = logits(load_model(chatglm3_dir, dtype="fp32"), prompt_ids)
    assert (expected - base).abs().max() > 1e-3  # the adapter really changes the model
    assert (logits(load_model(out), prompt_ids) - expected).abs().max() <= 1e-4
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(plain).__name__ == "GlmForCausalLM"
    assert (logits(plain, prompt_ids) - expected).abs().max() <= 1e-4
    assert plain.generation_config.eos_token_id == stop_ids(chatglm3_dir)
    gen_cfg = json.loads((out / "generation_config.json").read_text())
    assert gen_cfg["eos_token_id"] == stop_ids(chatglm3_dir) and gen_cfg["pad_token_id"] == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert (out / "tokenizer.model").read_bytes() == (chatglm3_dir / "tokenizer.model").read_bytes()
    assert (out / "MODEL_LICENSE").is_file() and (out / "tokenizer_config.json").is_file()
    assert json.loads((out / "config.json").read_text())["model_type"] == "glm"


def test_chatglm3_layout_converts_back_to_same_tensors(adapter, prompt_ids, tmp_path, chatglm3_dir):
    from glmtune.export import load_merged
    from glmtune.models import chatglm_state_dict_to_glm

    native, official = tmp_path / "native", tmp_path / "official"
    export_model(chatglm3_dir, native, adapter=adapter, dtype="fp32")
    export_model(chatglm3_dir, official, adapter=adapter, dtype="fp32", layout="chatglm3")
    merged = load_merged(chatglm3_dir, adapter)
    state = {}
    for f in sorted(official.glob("*.safetensors")):
        state.update(load_file(str(f)))
    # Same tensor names as THUDM's checkpoint, and back to exactly the merged native tensors.
    original = set(json.loads((chatglm3_dir / "model.safetensors.index.json").read_text())["weight_map"])
    assert set(state) == original
    assert json.loads((official / "config.json").read_text())["model_type"] == "chatglm"
    back = chatglm_state_dict_to_glm(state, merged.config)
    ours = merged.state_dict()
    assert set(back) == set(ours)
    for name, tensor in back.items():
        assert torch.equal(tensor, ours[name]), name
    assert torch.equal(logits(load_model(official), prompt_ids), logits(load_model(native), prompt_ids))
    assert json.loads((official / "generation_config.json").read_text())["eos_token_id"] == stop_ids(chatglm3_dir)


def test_official_lora_export_reproduces_reference(prompt_ids, tmp_path):
    need_fixtures()
    ref = load_file(str(TINY / "reference_lora.safetensors"))
    out = tmp_path / "merged"
    export_model(TINY, out, adapter=TINY / "lora-official", dtype="fp32")
    got = logits(load_model(out), prompt_ids)
    assert (got[..., :512] - ref["lora_single_logits_head"]).abs().max() <= 1e-4
    assert (got[..., -512:] - ref["lora_single_logits_tail"]).abs().max() <= 1e-4
    assert torch.equal(got.argmax(-1), ref["lora_single_logits_argmax"])


def test_dora_merges_exactly(prompt_ids, tmp_path, chatglm3_dir):
    dora = make_adapter(tmp_path / "dora", base=chatglm3_dir, use_dora=True)
    out = tmp_path / "merged"
    export_model(chatglm3_dir, out, adapter=dora, dtype="fp32")
    expected = logits(load_model(chatglm3_dir, dtype="fp32", adapter=dora), prompt_ids)
    assert (logits(load_model(out), prompt_ids) - expected).abs().max() <= 1e-4


def test_model_alone_converts_official_checkpoint_keeping_its_dtype(prompt_ids, tmp_path, chatglm3_dir):
    out = tmp_path / "native"
    result = export_model(chatglm3_dir, out)
    assert result.dtype == torch.float16 and result.merged_adapter is None
    base = logits(load_model(chatglm3_dir, dtype="fp32"), prompt_ids)
    assert torch.equal(logits(load_model(out, dtype="fp32"), prompt_ids), base)


def cli_error(capsys, *args) -> str:
    code = cli.main(["export", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("glmtune: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_refuses_non_empty_out_unless_force(adapter, tmp_path, capsys, chatglm3_dir):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    # Files glmtune does not write survive --force, even weight-like ones.
    user_files = {"training_args.bin": b"args", "my_adapter.safetensors": b"mine", "optimizer.bin": b"opt"}
    for name, data in user_files.items():
        (out / name).write_bytes(data)
    # Weight files glmtune did not write survive too (no glmtune_export.json lists them): another tool's shards.
    other = ["pytorch_model-00001-of-00002.bin", "model-00001-of-00009.safetensors"]
    for name in other:
        (out / name).write_bytes(b"other")
    err = cli_error(capsys, "--model", str(chatglm3_dir), "--adapter", str(adapter), "--out", str(out))
    assert "not empty" in err and "--force" in err and not (out / "config.json").exists()
    argv = ["export", "--model", str(chatglm3_dir), "--adapter", str(adapter), "--out", str(out), "--force"]
    assert cli.main(argv) == 0
    assert (out / "config.json").is_file() and (out / "notes.txt").read_text() == "keep me"
    assert all((out / name).read_bytes() == data for name, data in user_files.items())
    assert all((out / name).read_bytes() == b"other" for name in other)
    assert load_model(out) is not None
    # Never into the folder being read, even with --force.
    err = cli_error(capsys, "--model", str(chatglm3_dir), "--out", str(chatglm3_dir), "--force")
    assert "exported from" in err


def test_ptuning_export_explains_options(tmp_path, capsys):
    need_fixtures()
    for flag in ("--prefix", "--adapter"):
        err = cli_error(capsys, "--model", str(TINY), flag, str(TINY / "ptuning"), "--out", str(tmp_path / "x"))
        assert "cannot be merged" in err and "--prefix" in err and "LoRA" in err
    assert not (tmp_path / "x").exists()


def test_missing_adapter_files(tmp_path, capsys, chatglm3_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = cli_error(capsys, "--model", str(chatglm3_dir), "--adapter", str(empty), "--out", str(tmp_path / "o"))
    assert "adapter_config.json" in err
    err = cli_error(capsys, "--model", str(chatglm3_dir), "--adapter", str(tmp_path / "nowhere"),
                    "--out", str(tmp_path / "o"))
    assert "nowhere" in err and "not found" in err


def test_adapter_for_another_base_shape(adapter, tmp_path, capsys, chatglm3_dir):
    # The adapter was trained on the tiny shape (hidden 32); "small" has hidden 128.
    err = cli_error(capsys, "--model", "small", "--tokenizer", str(chatglm3_dir), "--adapter", str(adapter),
                    "--out", str(tmp_path / "o"))
    assert str(adapter) in err and "shape" in err


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("500MB") == 5 * 10**8 and parse_size("1GiB") == 2**30
    with pytest.raises(ExportError, match="not understood"):
        parse_size("big")


def test_freeze_result_exports_as_a_whole_model(prompt_ids, tmp_path, chatglm3_dir):
    from glmtune.methods import load_trained, prepare

    prepared = prepare(load_model(chatglm3_dir, dtype="fp32"), "freeze", {"trainable_layers": 1})
    with torch.no_grad():
        for _, param in prepared.trainable_parameters():
            param.add_(0.01)
    prepared.save(tmp_path / "freeze")
    export_model(chatglm3_dir, tmp_path / "out", adapter=tmp_path / "freeze", dtype="fp32")
    expected = logits(load_trained(load_model(chatglm3_dir, dtype="fp32"), tmp_path / "freeze"), prompt_ids)
    assert (expected - logits(load_model(chatglm3_dir, dtype="fp32"), prompt_ids)).abs().max() > 1e-3
    assert torch.equal(logits(load_model(tmp_path / "out"), prompt_ids), expected)
