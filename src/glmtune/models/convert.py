"""ChatGLM3 (THUDM layout) <-> transformers GLM (native layout), both ways.

Pure renaming plus one row split of the fused ``query_key_value`` (see
DESIGN.md, decision 1). Tensor conversion works one key at a time so loaders
can stream shard by shard and never hold two full copies of the weights.
"""

from __future__ import annotations

from ..errors import GlmtuneError

import re
from typing import Iterable, Iterator

import torch
from transformers import GlmConfig


class CheckpointError(GlmtuneError, ValueError):
    """A model folder cannot be loaded: the message names the file and the fix."""


# Options of ChatGLMConfig that GlmForCausalLM cannot express, with the value it needs.
_REQUIRED_CHATGLM_OPTIONS = {
    "add_bias_linear": False,
    "rmsnorm": True,
    "post_layer_norm": True,
    "apply_residual_connection_post_layernorm": False,
}
_CHATGLM_REQUIRED_KEYS = ("padded_vocab_size", "hidden_size", "num_layers", "num_attention_heads", "ffn_hidden_size")


def chatglm_to_glm_config(cfg: dict, source: str = "config.json") -> GlmConfig:
    """GlmConfig for a ChatGLM3 ``config.json`` dict; refuses what GLM cannot express."""
    for key, needed in _REQUIRED_CHATGLM_OPTIONS.items():
        if key in cfg and bool(cfg[key]) != needed:
            raise CheckpointError(
                f"{source}: {key}={cfg[key]!r} is not supported (GLM needs {key}={needed}); "
                "this is not a ChatGLM2/3 architecture glmtune can load natively"
            )
    missing = [k for k in _CHATGLM_REQUIRED_KEYS if k not in cfg]
    if missing:
        raise CheckpointError(f"{source}: missing ChatGLM config keys {missing}")
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("kv_channels") or cfg["hidden_size"] // heads
    groups = cfg.get("multi_query_group_num", heads) if cfg.get("multi_query_attention", False) else heads
    return GlmConfig(
        vocab_size=cfg["padded_vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["ffn_hidden_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=groups,
        head_dim=head_dim,
        rms_norm_eps=cfg.get("layernorm_epsilon", 1e-5),
        attention_bias=bool(cfg.get("add_qkv_bias", True)),
        max_position_embeddings=cfg.get("seq_length", 8192),
        rope_theta=10000.0 * float(cfg.get("rope_ratio", 1) or 1),
        partial_rotary_factor=0.5,
        attention_dropout=float(cfg.get("attention_dropout", 0.0)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        pad_token_id=cfg.get("pad_token_id", 0) if cfg.get("pad_token_id") is not None else 0,
        eos_token_id=cfg.get("eos_token_id", 2),
        initializer_range=0.02,
    )


def rope_theta(config: GlmConfig) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def glm_to_chatglm_config(config: GlmConfig) -> dict:
    """The official ChatGLM3 ``config.json`` for a GlmConfig (no ``auto_map``: no code is shipped)."""
    return {
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "padded_vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "ffn_hidden_size": config.intermediate_size,
        "num_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "kv_channels": config.head_dim,
        "multi_query_attention": config.num_key_value_heads != config.num_attention_heads,
        "multi_query_group_num": config.num_key_value_heads,
        "layernorm_epsilon": config.rms_norm_eps,
        "add_qkv_bias": config.attention_bias,
        "add_bias_linear": False,
        "rmsnorm": True,
        "post_layer_norm": True,
        "apply_residual_connection_post_layernorm": False,
        "apply_query_key_layer_scaling": True,
        "attention_softmax_in_fp32": True,
        "fp32_residual_connection": False,
        "bias_dropout_fusion": True,
        "original_rope": True,
        "seq_length": config.max_position_embeddings,
        "rope_ratio": rope_theta(config) / 10000.0,
        "attention_dropout": config.attention_dropout,
        "hidden_dropout": 0.0,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "use_cache": True,
    }


_LAYER = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_TOP_RENAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
_DROPPED = ("transformer.rotary_pos_emb.inv_freq",)


def qkv_split_sizes(config: GlmConfig) -> list[int]:
    d = config.head_dim
    return [config.num_attention_heads * d, config.num_key_value_heads * d, config.num_key_value_heads * d]


def chatglm_key_to_glm(name: str, tensor: torch.Tensor, config: GlmConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Native (name, tensor) pairs for one ChatGLM3 tensor (none for dropped buffers).

    Raises :class:`CheckpointError` for a key that belongs to no known layout.
    """
    if name in _DROPPED or name.endswith("rotary_pos_emb.inv_freq"):
        return
    if name in _TOP_RENAMES:
        yield _TOP_RENAMES[name], tensor
        return
    m = _LAYER.match(name)
    if m:
        idx, rest = m.groups()
        prefix = f"model.layers.{idx}."
        if rest in _LAYER_RENAMES:
            yield prefix + _LAYER_RENAMES[rest], tensor
            return
        qkv = re.fullmatch(r"self_attention\.query_key_value\.(weight|bias)", rest)
        if qkv:
            sizes = qkv_split_sizes(config)
            if tensor.shape[0] != sum(sizes):
                raise CheckpointError(
                    f"{name}: fused query_key_value has {tensor.shape[0]} rows, config implies {sum(sizes)}"
                )
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), torch.split(tensor, sizes, dim=0)):
                yield f"{prefix}self_attn.{proj}.{qkv.group(1)}", part
            return
    raise CheckpointError(f"unexpected tensor {name!r}: not part of the ChatGLM3 layout")


_NATIVE_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def chatglm_layout_plan(names: Iterable[str]) -> dict[str, list[str]]:
    """Official ChatGLM3 name -> the native names it is made of, in native order (q/k/v fused, in that order).

    Names only, so a writer can produce one fused tensor at a time.
    """
    inverse_top = {v: k for k, v in _TOP_RENAMES.items()}
    inverse_layer = {v: k for k, v in _LAYER_RENAMES.items()}
    plan: dict[str, list[str]] = {}
    for name in names:
        if name in inverse_top:
            plan[inverse_top[name]] = [name]
            continue
        m = _NATIVE_LAYER.match(name)
        if not m:
            raise CheckpointError(f"unexpected native tensor {name!r}")
        idx, rest = m.groups()
        prefix = f"transformer.encoder.layers.{idx}."
        if rest in inverse_layer:
            plan[prefix + inverse_layer[rest]] = [name]
        elif rest.startswith("self_attn.q_proj."):
            kind = rest.rsplit(".", 1)[1]
            parts = [f"model.layers.{idx}.self_attn.{p}.{kind}" for p in ("q_proj", "k_proj", "v_proj")]
            plan[f"{prefix}self_attention.query_key_value.{kind}"] = parts
        elif rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            continue  # fused with q_proj above
        else:
            raise CheckpointError(f"unexpected native tensor {name!r}")
    return plan


def glm_state_dict_to_chatglm(state: dict[str, torch.Tensor], config: GlmConfig) -> dict[str, torch.Tensor]:
    """Official ChatGLM3 tensors for a native state dict (q/k/v fused back)."""
    out: dict[str, torch.Tensor] = {}
    for name, parts in chatglm_layout_plan(state).items():
        out[name] = state[parts[0]] if len(parts) == 1 else torch.cat([state[p] for p in parts], dim=0)
    return out


def chatglm_state_dict_to_glm(state: dict[str, torch.Tensor], config: GlmConfig) -> dict[str, torch.Tensor]:
    """Native tensors for a whole ChatGLM3 state dict."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        out.update(chatglm_key_to_glm(name, tensor, config))
    return out
