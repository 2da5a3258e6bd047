"""Official ChatGLM semantics of a model folder: non-multi-query q/k/v, config defaults, clean errors, permissions.

The checkpoints here are tiny, random and written in THUDM's on-disk layout in-process, so these tests
need no fixtures. "Official" below means what THUDM's ``modeling_chatglm.py`` /
``configuration_chatglm.py`` (chatglm3-6b) do, transcribed where a test needs it.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

import glmtune
from glmtune.models import CheckpointError, glm_state_dict_to_chatglm
from glmtune.models.convert import chatglm_to_glm_config, fuse_qkv, split_qkv

HIDDEN, HEADS, D, VOCAB, FFN, LAYERS = 32, 4, 8, 96, 48, 2

# A tiny ChatGLM config as THUDM's config.json spells it, multi-query attention off.
NON_MQA = {
    "model_type": "chatglm", "padded_vocab_size": VOCAB, "hidden_size": HIDDEN, "ffn_hidden_size": FFN,
    "num_layers": LAYERS, "num_attention_heads": HEADS, "kv_channels": D, "multi_query_attention": False,
    "add_qkv_bias": True, "layernorm_epsilon": 1e-5, "seq_length": 64, "rope_ratio": 1,
}


def official_tensors(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under THUDM's names and shapes for ``cfg`` (every key given explicitly)."""
    g = torch.Generator().manual_seed(seed)
    h, heads, d = cfg["hidden_size"], cfg["num_attention_heads"], cfg["kv_channels"]
    groups = cfg["multi_query_group_num"] if cfg["multi_query_attention"] else heads
    rows = heads * d + 2 * groups * d

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    t = {"transformer.embedding.word_embeddings.weight": r(cfg["padded_vocab_size"], h),
         "transformer.encoder.final_layernorm.weight": 1 + r(h),
         "transformer.output_layer.weight": r(cfg["padded_vocab_size"], h)}
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        t.update({p + "input_layernorm.weight": 1 + r(h), p + "post_attention_layernorm.weight": 1 + r(h),
                  p + "self_attention.query_key_value.weight": r(rows, h),
                  p + "self_attention.dense.weight": r(h, heads * d),
                  p + "mlp.dense_h_to_4h.weight": r(2 * cfg["ffn_hidden_size"], h),
                  p + "mlp.dense_4h_to_h.weight": r(h, cfg["ffn_hidden_size"])})
        if cfg["add_qkv_bias"]:
            t[p + "self_attention.query_key_value.bias"] = r(rows)
    return t


def write_official(folder, cfg: dict, tensors: dict[str, torch.Tensor]):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def official_qkv_split(mixed: torch.Tensor, heads: int, d: int):
    """THUDM SelfAttention.forward without multi-query attention: view [..., np, 3*hn], split the last dim in 3."""
    mixed = mixed.view(*mixed.shape[:-1], heads, 3 * d)
    return torch.split(mixed, d, dim=-1)


def official_split_rows(fused: torch.Tensor) -> list[torch.Tensor]:
    """q, k, v rows (dim 0) of a fused tensor, split as the official forward splits its output features."""
    out = fused.movedim(0, -1)
    return [p.reshape(*out.shape[:-1], HEADS * D).movedim(-1, 0) for p in official_qkv_split(out, HEADS, D)]


# -- multi_query_attention: false ------------------------------------------------------------


def test_non_mqa_projections_match_the_official_split(tmp_path):
    tensors = official_tensors({**NON_MQA, "multi_query_group_num": 1})
    model = glmtune.load_model(write_official(tmp_path / "m", NON_MQA, tensors))
    x = torch.randn(2, 5, HIDDEN, generator=torch.Generator().manual_seed(1))
    for i, layer in enumerate(model.model.layers):
        w = tensors[f"transformer.encoder.layers.{i}.self_attention.query_key_value.weight"]
        b = tensors[f"transformer.encoder.layers.{i}.self_attention.query_key_value.bias"]
        expected = official_qkv_split(torch.nn.functional.linear(x, w, b), HEADS, D)
        attn = layer.self_attn
        with torch.no_grad():
            got = [proj(x).view(2, 5, HEADS, D) for proj in (attn.q_proj, attn.k_proj, attn.v_proj)]
        for name, e, g in zip("qkv", expected, got):
            assert torch.allclose(g, e, atol=1e-6, rtol=0), f"layer {i} {name}: max diff {(g - e).abs().max()}"


def test_non_mqa_and_grouped_layouts_of_one_model_give_identical_outputs(tmp_path):
    """The same official model written both ways (interleaved per head, and multi-query with as many
    groups as heads, whose rows are all-q | all-k | all-v) loads to the same logits and generation."""
    tensors = official_tensors({**NON_MQA, "multi_query_group_num": 1})
    grouped = {k: torch.cat(official_split_rows(t), dim=0) if "query_key_value" in k else t for k, t in tensors.items()}
    a = glmtune.load_model(write_official(tmp_path / "interleaved", NON_MQA, tensors))
    b = glmtune.load_model(write_official(tmp_path / "grouped", {**NON_MQA, "multi_query_attention": True,
                                                                  "multi_query_group_num": HEADS}, grouped))
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
    gen = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(a.generate(ids, **gen), b.generate(ids, **gen))


def test_non_mqa_chatglm3_save_is_bit_identical_both_ways(tmp_path):
    tensors = official_tensors({**NON_MQA, "multi_query_group_num": 1})
    model = glmtune.load_model(write_official(tmp_path / "m", NON_MQA, tensors))
    glmtune.save_model(model, tmp_path / "cg", layout="chatglm3")
    written = load_file(str(tmp_path / "cg" / "model.safetensors"))
    assert written.keys() == tensors.keys()
    assert all(torch.equal(written[k], tensors[k]) for k in tensors)
    assert json.loads((tmp_path / "cg" / "config.json").read_text())["multi_query_attention"] is False
    # Through a native folder and back, and through the in-memory conversion, the same.
    glmtune.save_model(model, tmp_path / "native", layout="native")
    glmtune.save_model(glmtune.load_model(tmp_path / "native"), tmp_path / "cg2", layout="chatglm3")
    again = load_file(str(tmp_path / "cg2" / "model.safetensors"))
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)
    converted = glm_state_dict_to_chatglm(model.state_dict(), model.config)
    assert all(torch.equal(converted[k], tensors[k]) for k in tensors)


def test_grouped_layout_with_as_many_groups_as_heads_round_trips_as_written(tmp_path):
    cfg = {**NON_MQA, "multi_query_attention": True, "multi_query_group_num": HEADS}
    tensors = official_tensors(cfg)
    glmtune.save_model(glmtune.load_model(write_official(tmp_path / "m", cfg, tensors)), tmp_path / "cg",
                       layout="chatglm3")
    written = load_file(str(tmp_path / "cg" / "model.safetensors"))
    assert all(torch.equal(written[k], tensors[k]) for k in tensors)
    assert json.loads((tmp_path / "cg" / "config.json").read_text())["multi_query_attention"] is True


@pytest.mark.parametrize("mqa", [False, True])
@pytest.mark.parametrize("trailing", [(), (HIDDEN,), (12,)])  # bias, weight, a LoRA B of rank 4 x 3
def test_split_and_fuse_qkv_are_exact_inverses(mqa, trailing):
    groups = 2 if mqa else HEADS
    config = chatglm_to_glm_config({**NON_MQA, "multi_query_attention": mqa, "multi_query_group_num": groups})
    rows = HEADS * D + 2 * groups * D
    fused = torch.randn(rows, *trailing)
    q, k, v = split_qkv(fused, config)
    assert (q.shape[0], k.shape[0], v.shape[0]) == (HEADS * D, groups * D, groups * D)
    assert torch.equal(fuse_qkv(q, k, v, config), fused)
    if not mqa:
        assert all(torch.equal(mine, ref) for mine, ref in zip((q, k, v), official_split_rows(fused)))
    with pytest.raises(CheckpointError, match="rows"):
        split_qkv(fused[1:], config)


# -- missing keys: official ChatGLMConfig defaults -------------------------------------------------


def test_missing_config_keys_take_the_official_defaults():
    # THUDM configuration_chatglm.py: num_layers 28, padded_vocab_size 65024, hidden_size 4096,
    # ffn_hidden_size 13696, kv_channels 128, num_attention_heads 32, seq_length 2048,
    # layernorm_epsilon 1e-5, rope_ratio 1, add_qkv_bias False, multi_query_attention False,
    # multi_query_group_num 1.
    config = chatglm_to_glm_config({"model_type": "chatglm"})
    assert (config.num_hidden_layers, config.vocab_size, config.hidden_size, config.intermediate_size) == (
        28, 65024, 4096, 13696)
    assert (config.head_dim, config.num_attention_heads, config.num_key_value_heads) == (128, 32, 32)
    assert (config.max_position_embeddings, config.rms_norm_eps, config.attention_bias) == (2048, 1e-5, False)
    assert config.rope_parameters["rope_theta"] == 10000.0
    mqa = chatglm_to_glm_config({"multi_query_attention": True})
    assert mqa.num_key_value_heads == 1  # multi_query_group_num defaults to 1, not to the head count


def test_folder_with_a_sparse_config_loads_with_official_defaults(tmp_path):
    """No add_qkv_bias (so no bias), no multi-query keys (so interleaved q/k/v), no kv_channels (so 128)."""
    sparse = {k: NON_MQA[k] for k in ("model_type", "padded_vocab_size", "hidden_size", "ffn_hidden_size",
                                      "num_layers", "num_attention_heads")}
    full = {**sparse, "kv_channels": 128, "multi_query_attention": False, "add_qkv_bias": False}
    tensors = official_tensors(full)
    assert not any(k.endswith("query_key_value.bias") for k in tensors)
    model = glmtune.load_model(write_official(tmp_path / "m", sparse, tensors))
    c = model.config
    assert (c.head_dim, c.num_key_value_heads, c.attention_bias, c.max_position_embeddings) == (128, HEADS, False, 2048)
    w = tensors["transformer.encoder.layers.0.self_attention.query_key_value.weight"]
    assert torch.equal(model.model.layers[0].self_attn.k_proj.weight, w.view(HEADS, 3, 128, HIDDEN)[:, 1].reshape(-1, HIDDEN))


# -- bad values in config.json: one-line errors naming the file, the key and what is expected -------


def _load_error(folder) -> str:
    with pytest.raises(CheckpointError) as info:
        glmtune.load_model(folder)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("key,value,expected", [
    ("num_attention_heads", 0, "positive integer"),
    ("num_attention_heads", -4, "positive integer"),
    ("num_attention_heads", "4", "positive integer"),
    ("num_attention_heads", None, "positive integer"),
    ("num_attention_heads", 4.0, "positive integer"),
    ("num_attention_heads", True, "positive integer"),
    ("hidden_size", [32], "positive integer"),
    ("kv_channels", None, "positive integer"),
    ("num_layers", 1.5, "positive integer"),
    ("layernorm_epsilon", "1e-5", "positive number"),
    ("layernorm_epsilon", 0, "positive number"),
    ("rope_ratio", None, "positive number"),
    ("attention_dropout", 1.5, "number from 0 to 1"),
    ("add_qkv_bias", "false", "true or false"),
    ("multi_query_attention", 1, "true or false"),
])
def test_bad_chatglm_config_value_is_a_clear_error(tmp_path, key, value, expected):
    (tmp_path / "config.json").write_text(json.dumps({**NON_MQA, key: value}))
    msg = _load_error(tmp_path)
    assert str(tmp_path / "config.json") in msg and key in msg and expected in msg and json.dumps(value) in msg, msg


def test_heads_not_divisible_by_groups_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**NON_MQA, "multi_query_attention": True,
                                                       "multi_query_group_num": 3}))
    msg = _load_error(tmp_path)
    assert "config.json" in msg and "multi_query_group_num 3" in msg and "num_attention_heads 4" in msg


@pytest.mark.parametrize("key,value", [("num_attention_heads", 0), ("num_attention_heads", "x"),
                                       ("num_key_value_heads", None), ("head_dim", 2.5), ("rms_norm_eps", -1)])
def test_bad_native_config_value_is_a_clear_error(tmp_path, key, value):
    cfg = {"model_type": "glm", "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": FFN,
           "num_hidden_layers": 1, "num_attention_heads": HEADS, "num_key_value_heads": 2, "head_dim": D}
    (tmp_path / "config.json").write_text(json.dumps({**cfg, key: value}))
    msg = _load_error(tmp_path)
    assert str(tmp_path / "config.json") in msg and key in msg and "expected" in msg, msg


def test_bad_config_value_is_one_line_on_the_command_line(tmp_path, capsys, trained_tokenizer_dir):
    from glmtune.cli import main

    model = tmp_path / "model"
    model.mkdir()
    # _name_or_path tells the family (ChatGLM3), so the error reached is the config value's.
    (model / "config.json").write_text(json.dumps({**NON_MQA, "num_attention_heads": 0,
                                                   "_name_or_path": "THUDM/chatglm3-6b"}))
    (model / "tokenizer.model").write_bytes((trained_tokenizer_dir / "tokenizer.model").read_bytes())
    save_file({"transformer.output_layer.weight": torch.zeros(VOCAB, HIDDEN)}, str(model / "model.safetensors"))
    code = main(["export", "--model", str(model), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("glmtune: error: ") and err.count("\n") == 1, err
    assert "num_attention_heads is 0, expected a positive integer" in err and "config.json" in err


# -- other damaged folders ----------------------------------------------------------------------


@pytest.mark.parametrize("shard", [5, "../elsewhere.safetensors", "/etc/passwd"])
def test_index_naming_a_shard_outside_the_folder_is_refused(tmp_path, shard):
    cfg = {**NON_MQA, "multi_query_group_num": 1}
    write_official(tmp_path, NON_MQA, official_tensors(cfg))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": shard}}))
    msg = _load_error(tmp_path)
    assert "model.safetensors.index.json" in msg and json.dumps(shard) in msg and "inside the model folder" in msg


@pytest.mark.parametrize("state", [{"transformer.output_layer.weight": 5}, {5: torch.zeros(2)}])
def test_bin_that_is_not_a_state_dict_is_refused(tmp_path, state):
    (tmp_path / "config.json").write_text(json.dumps(NON_MQA))
    torch.save(state, tmp_path / "pytorch_model.bin")
    msg = _load_error(tmp_path)
    assert "pytorch_model.bin" in msg and "expected tensors under string names" in msg


# -- permissions of written weights -------------------------------------------------------------


@pytest.mark.parametrize("layout", ["native", "chatglm3"])
def test_saved_weights_get_the_umask_permissions_like_the_config(tmp_path, layout):
    old = os.umask(0o022)
    try:
        glmtune.save_model(glmtune.load_model("tiny"), tmp_path / "out", layout=layout, max_shard_bytes=2_000_000)
    finally:
        os.umask(old)
    files = sorted((tmp_path / "out").iterdir())
    assert any(f.name.endswith(".safetensors") for f in files) and len(files) > 2  # shards + index + config
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
    assert set(modes.values()) == {0o644}, modes


@pytest.mark.parametrize("layers", [10**9, 1])
def test_layer_count_not_matching_the_weights_is_refused_before_building(tmp_path, layers):
    """A damaged num_layers is caught from the safetensors headers (10**9 layers would exhaust memory)."""
    write_official(tmp_path, {**NON_MQA, "num_layers": layers}, official_tensors({**NON_MQA, "multi_query_group_num": 1}))
    msg = _load_error(tmp_path)
    assert "config.json" in msg and f"num_layers is {layers}, but the weights hold {LAYERS} layers" in msg
