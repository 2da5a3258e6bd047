"""``glmtune export`` for THUDM's own code: official-layout LoRA adapters, P-Tuning checkpoints, configs."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, need_fixtures
from test_export import make_adapter
from glmtune import cli, load_model, save_model
from glmtune.export import OFFICIAL_AUTO_MAP, export_model

OFFICIAL_KEY = re.compile(r"^base_model\.model\.transformer\.encoder\.layers\.\d+\.(self_attention\.(query_key_value|dense)"
                          r"|mlp\.(dense_h_to_4h|dense_4h_to_h))\.lora_[AB]\.weight$")
# What PEFT 0.4-0.10 (the official demo's pins) read from adapter_config.json; newer keys break them.
OLD_PEFT_FIELDS = {"peft_type", "task_type", "inference_mode", "base_model_name_or_path", "revision", "r",
                   "target_modules", "lora_alpha", "lora_dropout", "fan_in_fan_out", "bias", "modules_to_save",
                   "init_lora_weights", "layers_to_transform", "layers_pattern"}


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def make_lora(base, out_dir, **options):
    return make_adapter(out_dir, base=base, **options)


@pytest.mark.parametrize("options", [
    {"target": "all-linear"},
    {"target": ["q_proj", "v_proj", "down_proj"], "r": 3, "alpha": 5, "use_rslora": True},
])
def test_lora_exports_to_official_layout_with_the_same_outputs(tmp_path, options):
    ours = make_lora("tiny", tmp_path / "lora", **options)
    out = tmp_path / "official"
    assert cli.main(["export", "--model", "tiny", "--adapter", str(ours), "--out", str(out), "--adapter-only",
                     "--base-path", "THUDM/chatglm3-6b"]) == 0
    state = load_file(str(out / "adapter_model.safetensors"))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert all(OFFICIAL_KEY.match(k) for k in state), sorted(state)[:3]
    assert set(cfg) <= OLD_PEFT_FIELDS and cfg["peft_type"] == "LORA" and cfg["base_model_name_or_path"] == "THUDM/chatglm3-6b"
    assert "query_key_value" in cfg["target_modules"]
    r = options.get("r", 4)
    qkv_a = state["base_model.model.transformer.encoder.layers.0.self_attention.query_key_value.lora_A.weight"]
    n_parts = 3 if options["target"] == "all-linear" else 2
    assert cfg["r"] == n_parts * r and qkv_a.shape[0] == cfg["r"]
    scaling = options.get("alpha", 8) / (r**0.5 if options.get("use_rslora") else r)
    assert cfg["lora_alpha"] / cfg["r"] == pytest.approx(scaling, rel=1e-12)
    ids = torch.randint(3, 64000, (2, 24), generator=torch.Generator().manual_seed(0))
    expected = logits(load_model("tiny", dtype="fp32", adapter=ours), ids)
    assert (expected - logits(load_model("tiny", dtype="fp32"), ids)).abs().max() > 1e-3
    # glmtune's loader for official adapters reads it back (A copied to q/k/v, B split by rows).
    assert (logits(load_model("tiny", dtype="fp32", adapter=out), ids) - expected).abs().max() <= 1e-5


def test_lora_export_matches_the_fixture_adapter_naming(tmp_path):
    need_fixtures()
    ours = make_lora(TINY, tmp_path / "lora", target="qkv")
    out = export_model(TINY, tmp_path / "official", adapter=ours, adapter_only=True).out_dir
    official = load_file(str(TINY / "lora-official" / "adapter_model.safetensors"))
    ours_state = load_file(str(out / "adapter_model.safetensors"))
    assert set(ours_state) == set(official)
    assert all(ours_state[k].shape[1:] == official[k].shape[1:] if "lora_A" in k else
               ours_state[k].shape[0] == official[k].shape[0] for k in official)
    reference = json.loads((TINY / "lora-official" / "adapter_config.json").read_text())
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert set(cfg) <= set(reference) and cfg["target_modules"] == reference["target_modules"]
    assert cfg["base_model_name_or_path"] == str(TINY.resolve())


def test_dora_and_other_results_are_refused_for_the_official_adapter_layout(tmp_path, capsys):
    dora = make_lora("tiny", tmp_path / "dora", use_dora=True)
    assert cli.main(["export", "--model", "tiny", "--adapter", str(dora), "--out", str(tmp_path / "o"),
                     "--adapter-only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glmtune: error: ") and "DoRA" in err and "merged" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    assert cli.main(["export", "--model", "tiny", "--adapter", str(dora), "--out", str(tmp_path / "o"),
                     "--adapter-only", "--layout", "native"]) == 2
    assert "use it as it is" in capsys.readouterr().err


def test_ptuning_exports_as_the_official_checkpoint_folder(tmp_path):
    need_fixtures()
    out = tmp_path / "ckpt"
    assert cli.main(["export", "--model", str(TINY), "--prefix", str(TINY / "ptuning"), "--out", str(out),
                     "--layout", "chatglm3", "--dtype", "fp32"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pre_seq_len"] == 8 and cfg["prefix_projection"] is False and cfg["model_type"] == "chatglm"
    assert cfg["auto_map"] == json.loads((TINY / "config.json").read_text())["auto_map"]
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    base_keys = set(json.loads((TINY / "model.safetensors.index.json").read_text())["weight_map"])
    assert set(weight_map) == base_keys | {"transformer.prefix_encoder.embedding.weight"}
    # The whole base model is there, unchanged (fp16 upcast), as in the demo's checkpoints.
    written, original = {}, {}
    for f in sorted(out.glob("*.safetensors")):
        written.update(load_file(str(f)))
    for f in sorted(TINY.glob("model-*.safetensors")):
        original.update(load_file(str(f)))
    assert all(torch.equal(written[k], original[k].float()) for k in base_keys)
    # And glmtune's official prefix loader reads the folder back to the same outputs.
    ids = load_file(str(TINY / "reference.safetensors"))["single_input_ids"]
    expected = logits(load_model(TINY, dtype="fp32", prefix=TINY / "ptuning"), ids)
    assert torch.equal(logits(load_model(TINY, dtype="fp32", prefix=out), ids), expected)
    ref = load_file(str(TINY / "reference.safetensors"))
    assert (expected[..., :512] - ref["ptuning_single_logits_head"]).abs().max() <= 1e-4


def test_ptuning_with_projection_round_trips(tmp_path, chatglm3_dir):
    from glmtune.methods import prepare

    prepared = prepare(load_model(chatglm3_dir, dtype="fp32"), "ptuning",
                       {"num_virtual_tokens": 4, "prefix_projection": True})
    with torch.no_grad():
        for _, param in prepared.trainable_parameters():
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(2)) * 0.1)
    prepared.save(tmp_path / "pt")
    out = export_model(chatglm3_dir, tmp_path / "ckpt", adapter=tmp_path / "pt", layout="chatglm3",
                       dtype="fp32").out_dir
    assert json.loads((out / "config.json").read_text())["prefix_projection"] is True
    assert "transformer.prefix_encoder.trans.0.weight" in load_file(str(out / "prefix_encoder.safetensors"))
    ids = torch.tensor([[5, 17, 42, 99, 256, 511, 7, 1000]])
    expected = logits(load_model(chatglm3_dir, dtype="fp32", prefix=tmp_path / "pt"), ids)
    assert torch.equal(logits(load_model(chatglm3_dir, dtype="fp32", prefix=out), ids), expected)


def test_ptuning_advice_says_what_works(tmp_path, capsys):
    need_fixtures()
    assert cli.main(["export", "--model", str(TINY), "--prefix", str(TINY / "ptuning"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "cannot be merged" in err and "--layout chatglm3" in err and "inference_hf.py" in err
    assert "--prefix DIR" in err and "LoRA" in err and not (tmp_path / "x").exists()


def test_chatglm3_layout_keeps_thudm_auto_map_and_tokenizer_config(tmp_path):
    need_fixtures()
    official = export_model(TINY, tmp_path / "official", layout="chatglm3").out_dir
    assert json.loads((official / "config.json").read_text())["auto_map"] == \
        json.loads((TINY / "config.json").read_text())["auto_map"]
    tokenizer_cfg = json.loads((official / "tokenizer_config.json").read_text())
    assert tokenizer_cfg == json.loads((TINY / "tokenizer_config.json").read_text())
    assert not (official / "special_tokens_map.json").exists()
    # From a native folder (glmtune's own tokenizer config, no auto_map): THUDM's files are written.
    native = export_model(TINY, tmp_path / "native").out_dir
    back = export_model(native, tmp_path / "back", layout="chatglm3").out_dir
    assert json.loads((back / "config.json").read_text())["auto_map"] == OFFICIAL_AUTO_MAP
    tokenizer_cfg = json.loads((back / "tokenizer_config.json").read_text())
    # ChatGLMTokenizer defines these as read-only properties: setting them fails ("has no setter").
    assert not {"eos_token", "pad_token", "unk_token"} & set(tokenizer_cfg)
    assert tokenizer_cfg["auto_map"]["AutoTokenizer"][0] == "tokenization_chatglm.ChatGLMTokenizer"
    assert tokenizer_cfg["tokenizer_class"] == "ChatGLMTokenizer"
    assert torch.equal(load_model(back).model.embed_tokens.weight, load_model(TINY).model.embed_tokens.weight)


@pytest.mark.parametrize("multi_query", [True, False])
def test_official_lora_rows_follow_the_fused_weight_order(tmp_path, multi_query):
    """B'·A' of query_key_value equals the native q/k/v updates fused as the base weight is fused.

    Without multi-query attention THUDM's fused rows are interleaved per head, so a
    plain [q; k; v] stacking would be silently wrong there.
    """
    from safetensors.torch import load_file as load
    from transformers import GlmConfig, GlmForCausalLM

    from glmtune.models.convert import fuse_qkv

    config = GlmConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2 if multi_query else 4, head_dim=8,
                       attention_bias=True, partial_rotary_factor=0.5, pad_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    save_model_dir = tmp_path / "base"
    save_model(GlmForCausalLM(config), save_model_dir, layout="chatglm3")
    assert json.loads((save_model_dir / "config.json").read_text())["multi_query_attention"] is multi_query
    ours = make_lora(save_model_dir, tmp_path / "lora", target="all-linear")
    out = export_model(save_model_dir, tmp_path / "official", adapter=ours, adapter_only=True).out_dir
    native, official = load(str(ours / "adapter_model.safetensors")), load(str(out / "adapter_model.safetensors"))
    cfg = json.loads((out / "adapter_config.json").read_text())
    loaded = load_model(save_model_dir).config

    def delta(proj):
        key = f"base_model.model.model.layers.1.self_attn.{proj}"
        return native[f"{key}.lora_B.weight"] @ native[f"{key}.lora_A.weight"] * (8 / 4)

    key = "base_model.model.transformer.encoder.layers.1.self_attention.query_key_value"
    got = official[f"{key}.lora_B.weight"] @ official[f"{key}.lora_A.weight"] * (cfg["lora_alpha"] / cfg["r"])
    assert (got - fuse_qkv(delta("q_proj"), delta("k_proj"), delta("v_proj"), loaded)).abs().max() <= 1e-7
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = logits(load_model(save_model_dir, dtype="fp32", adapter=ours), ids)
    assert (logits(load_model(save_model_dir, dtype="fp32", adapter=out), ids) - expected).abs().max() <= 1e-5


def test_official_adapter_export_names_a_wrong_base_model(tmp_path, capsys):
    ours = make_lora("tiny", tmp_path / "lora", target="all-linear")
    assert cli.main(["export", "--model", "small", "--adapter", str(ours), "--out", str(tmp_path / "o"),
                     "--adapter-only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glmtune: error: ") and str(ours) in err and "base model" in err
    assert not (tmp_path / "o").exists()
