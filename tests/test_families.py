"""The family registry itself: one record per family, found by name, tokenizer or folder; notes; shapes."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import need_fixtures
from glmtune.families import FAMILIES, FamilyError, detect_family, family_of, get_family, load_tokenizer
from glmtune.models.shapes import SHAPES


def test_every_family_is_registered_with_its_shapes():
    assert list(FAMILIES) == ["chatglm3", "chatglm2", "glm4", "glm4-0414"]
    for family in FAMILIES.values():
        assert family.shapes and all(name in SHAPES for name in family.shapes), family.name
    with pytest.raises(FamilyError, match="unknown model family 'glm5'; known families: chatglm3, chatglm2"):
        get_family("glm5")


def test_a_folder_that_does_not_tell_asks_for_model_family(tmp_path, trained_tokenizer_dir):
    (tmp_path / "tokenizer.model").write_bytes((trained_tokenizer_dir / "tokenizer.model").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "chatglm", "padded_vocab_size": 65024}))
    with pytest.raises(FamilyError, match=r"nothing in config.json / tokenizer_config.json tells .* set model.family"):
        detect_family(tmp_path)
    with pytest.raises(FamilyError, match="set model.family"):
        load_tokenizer(tmp_path)
    assert family_of(load_tokenizer(tmp_path, family="chatglm2")).name == "chatglm2"
    assert detect_family(tmp_path, family="chatglm3").name == "chatglm3"


def test_glm4_hf_folder_reads_its_tokenizer_json(tmp_path):
    tok = load_tokenizer(need_fixtures() / "glm4-tiny")
    tok.hf.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "glm", "vocab_size": 151552}))
    hf_folder = load_tokenizer(tmp_path)
    assert family_of(hf_folder).name == "glm4"
    text = "你好，GLM-4! <|user|> 12345 emoji 🙂\n\t end"
    assert hf_folder.encode(text) == tok.encode(text) and hf_folder.stop_ids == tok.stop_ids


def test_glm4_data_check_reports_the_ignored_loss_key(tmp_path, capsys):
    from glmtune.cli import main

    data = tmp_path / "g4.jsonl"
    data.write_text(json.dumps({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "no", "loss": False},
        {"role": "user", "content": "again"}, {"role": "assistant", "content": "yes"}]}) + "\n")
    assert main(["data", "check", str(data), "--model", str(need_fixtures() / "glm4-tiny")]) == 0
    err = capsys.readouterr().err
    assert f'{data}:1: warning: [glm4] "loss": false on an assistant message is ignored' in err


def test_forced_family_decides_how_rope_ratio_applies(tmp_path, chatglm3_dir):
    """ChatGLM2-6B-32k divides positions by rope_ratio; a renamed folder forced to chatglm2 loads that way."""
    import shutil

    from glmtune import load_model

    folder = tmp_path / "renamed-32k"
    shutil.copytree(chatglm3_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("_name_or_path", "glmtune_family")}
    (folder / "config.json").write_text(json.dumps({**cfg, "rope_ratio": 16}))
    (folder / "tokenizer_config.json").unlink(missing_ok=True)
    forced = load_model(folder, family="chatglm2").config
    assert forced.rope_parameters["rope_type"] == "linear" and forced.rope_parameters["factor"] == 16.0
    assert forced.rope_parameters["rope_theta"] == 10000.0
    base = load_model(folder, family="chatglm3").config
    assert base.rope_parameters["rope_type"] == "default" and base.rope_parameters["rope_theta"] == 160000.0


def test_glm4_native_thudm_native_round_trip_is_bit_identical(tmp_path):
    from glmtune import load_model, save_model

    original = load_model(need_fixtures() / "glm4-tiny")  # THUDM layout, bf16 upcast to fp32
    save_model(original, tmp_path / "native", family="glm4")
    native = load_model(tmp_path / "native")
    save_model(native, tmp_path / "thudm", layout="chatglm3", family="glm4")
    cfg = json.loads((tmp_path / "thudm" / "config.json").read_text())
    assert cfg["model_type"] == "chatglm" and cfg["padded_vocab_size"] == 151552 and cfg["rope_ratio"] == 500
    again = load_model(tmp_path / "thudm")
    assert detect_family(tmp_path / "thudm").name == "glm4"
    state, final = original.state_dict(), again.state_dict()
    assert state.keys() == final.keys()
    assert all(torch.equal(state[k], final[k]) for k in state)
    assert again.config.rope_parameters == original.config.rope_parameters
    assert again.config.rms_norm_eps == original.config.rms_norm_eps
