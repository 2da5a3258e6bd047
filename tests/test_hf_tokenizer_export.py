"""``glmtune export`` writes standard tokenizer files (native layout, ``--tokenizer-only``) and keeps THUDM's (chatglm3)."""

from __future__ import annotations

import json

import pytest

from glmtune import cli, load_tokenizer
from glmtune.data.chat_format import build_prompt
from glmtune.export import export_model

HISTORY = [{"role": "system", "content": "你是一个天气助手。"}, {"role": "user", "content": "今天北京天气怎么样？"}]


def _auto(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)  # no trust_remote_code


def _check_standard_tokenizer(folder, tok):
    hf = _auto(folder)
    ids = hf.apply_chat_template(HISTORY, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == build_prompt(HISTORY, tok)
    assert hf("你好 world")["input_ids"] == tok.encode("你好 world", add_prefix=True)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, tok.get_command("<|user|>"), tok.get_command("<|observation|>")]


def test_native_export_loads_in_auto_tokenizer(tmp_path, chatglm3_dir):
    out = export_model(chatglm3_dir, tmp_path / "out").out_dir
    tok = load_tokenizer(chatglm3_dir)
    _check_standard_tokenizer(out, tok)
    assert load_tokenizer(out).encode("hi") == tok.encode("hi")  # glmtune still reads tokenizer.model
    manifest = json.loads((out / "glmtune_export.json").read_text())
    assert {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"} <= set(manifest["files"])


def test_chatglm3_layout_keeps_thudm_tokenizer_files(tmp_path, chatglm3_dir):
    out = export_model(chatglm3_dir, tmp_path / "out", layout="chatglm3").out_dir
    assert not (out / "tokenizer.json").exists()
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "ChatGLMTokenizer"


def test_tokenizer_only_export(tmp_path, chatglm3_dir, capsys):
    out = tmp_path / "tok"
    assert cli.main(["export", "--tokenizer-only", str(chatglm3_dir), "--out", str(out)]) == 0
    assert "AutoTokenizer loads it" in capsys.readouterr().out
    written = {p.name for p in out.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "generation_config.json",
            "glmtune_export.json"} <= written
    assert not any(n.endswith(".safetensors") or n == "config.json" for n in written)
    _check_standard_tokenizer(out, load_tokenizer(chatglm3_dir))
    # --force replaces its own files, and only those.
    (out / "notes.txt").write_text("mine")
    assert cli.main(["export", "--tokenizer-only", str(chatglm3_dir), "--out", str(out), "--force"]) == 0
    assert "replaced from the previous glmtune export" in capsys.readouterr().out
    assert (out / "notes.txt").read_text() == "mine"


def _error(capsys, *args) -> str:
    assert cli.main(["export", *args]) != 0
    return capsys.readouterr().err


def test_tokenizer_only_never_writes_into_its_input_or_over_user_files(tmp_path, chatglm3_dir, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in chatglm3_dir.iterdir()}
    err = _error(capsys, "--tokenizer-only", str(chatglm3_dir), "--out", str(chatglm3_dir), "--force")
    assert "--tokenizer-only" in err and "never writes into its inputs" in err
    assert {p.name: p.stat().st_mtime_ns for p in chatglm3_dir.iterdir()} == before
    # A user's folder with their own tokenizer.json: refused, the file kept.
    user = tmp_path / "user"
    user.mkdir()
    (user / "tokenizer.json").write_text("{}")
    err = _error(capsys, "--tokenizer-only", str(chatglm3_dir), "--out", str(user), "--force")
    assert "tokenizer.json" in err and "not written by a glmtune export" in err
    assert (user / "tokenizer.json").read_text() == "{}"


@pytest.mark.parametrize("extra", [["--model", "tiny"], ["--adapter", "x"]])
def test_tokenizer_only_refuses_model_options(tmp_path, chatglm3_dir, capsys, extra):
    err = _error(capsys, "--tokenizer-only", str(chatglm3_dir), "--out", str(tmp_path / "o"), *extra)
    assert "writes the tokenizer files only" in err and extra[0] in err
    assert not (tmp_path / "o").exists()


def test_export_without_model_is_a_clear_error(tmp_path, capsys):
    assert "--model BASE (or --tokenizer-only MODEL" in _error(capsys, "--out", str(tmp_path / "o"))


def test_plain_transformers_chats_with_a_native_export(tmp_path):
    """AutoModelForCausalLM + AutoTokenizer + generate, no glmtune and no remote code: the trained answers."""
    import torch
    from transformers import AutoModelForCausalLM

    from glmtune.data.chat_format import parse_reply
    from test_infer_trained import IDENTITY, TOOLS, trained_chatbot

    out = export_model(trained_chatbot()[0], tmp_path / "out", dtype="fp32").out_dir
    hf, model = _auto(out), AutoModelForCausalLM.from_pretrained(out)
    for messages, tools, expected in [([{"role": "user", "content": "who are you"}], None, (IDENTITY, None)),
                                      ([{"role": "user", "content": "weather in Paris?"}], TOOLS, "get_weather")]:
        inputs = hf.apply_chat_template(messages, tools=tools, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
        with torch.no_grad():  # generation_config.json's eos list ends the turn
            ids = model.generate(**inputs, max_new_tokens=48, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        assert ids[-1].item() in model.generation_config.eos_token_id
        text = hf.decode(ids, skip_special_tokens=True)
        content, call = parse_reply(text)
        if call is None:
            assert (content, call) == expected
        else:
            assert (call.name, call.parameters) == (expected, {"city": "Paris"})
