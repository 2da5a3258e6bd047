"""ChatGLM3 (THUDM layout) <-> transformers GLM (native layout), both ways.

Pure renaming plus one row split of the fused ``query_key_value`` (see
DESIGN.md, decision 1). Tensor conversion works one key at a time so loaders
can stream shard by shard and never hold two full copies of the weights.
"""

from __future__ import annotations

from ..errors import GlmtuneError

import json
import math
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

# THUDM's ChatGLMConfig.__init__ defaults (configuration_chatglm.py of chatglm3-6b; GLM-4's are the
# same): the official code uses these for any key config.json leaves out.
CHATGLM_DEFAULTS = {
    "num_layers": 28,
    "padded_vocab_size": 65024,
    "hidden_size": 4096,
    "ffn_hidden_size": 13696,
    "kv_channels": 128,
    "num_attention_heads": 32,
    "seq_length": 2048,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "layernorm_epsilon": 1e-5,
    "rope_ratio": 1,
    "rmsnorm": True,
    "apply_residual_connection_post_layernorm": False,
    "post_layer_norm": True,
    "add_bias_linear": False,
    "add_qkv_bias": False,
    "multi_query_attention": False,
    "multi_query_group_num": 1,
}

_POSITIVE_INT = "a positive integer"
_POSITIVE_NUMBER = "a positive number"
_PROBABILITY = "a number from 0 to 1"
_BOOL = "true or false"
_CHATGLM_VALUE_KINDS = {
    **{k: _POSITIVE_INT for k in ("num_layers", "padded_vocab_size", "hidden_size", "ffn_hidden_size", "kv_channels",
                                  "num_attention_heads", "seq_length", "multi_query_group_num")},
    **{k: _POSITIVE_NUMBER for k in ("layernorm_epsilon", "rope_ratio")},
    **{k: _PROBABILITY for k in ("hidden_dropout", "attention_dropout")},
    **{k: _BOOL for k in ("rmsnorm", "apply_residual_connection_post_layernorm", "post_layer_norm",
                          "add_bias_linear", "add_qkv_bias", "multi_query_attention")},
}
# The same checks for a native (transformers GlmConfig) config.json.
GLM_VALUE_KINDS = {
    **{k: _POSITIVE_INT for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                  "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")},
    "rms_norm_eps": _POSITIVE_NUMBER,
    "attention_dropout": _PROBABILITY,
    **{k: _BOOL for k in ("attention_bias", "tie_word_embeddings", "multi_query_attention")},
}


def _valid(value, kind: str) -> bool:
    if kind == _BOOL:
        return isinstance(value, bool)
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == _POSITIVE_INT:
        return number and isinstance(value, int) and value > 0
    if kind == _POSITIVE_NUMBER:
        return number and value > 0
    return number and 0 <= value < 1


def check_config_values(cfg: dict, kinds: dict[str, str], source: str) -> None:
    """Refuse a config.json value of the wrong type or range, naming the file, the key and what is expected."""
    for key, kind in kinds.items():
        if key in cfg and not _valid(cfg[key], kind):
            raise CheckpointError(
                f"{source}: {key} is {json.dumps(cfg[key])}, expected {kind}; fix that value in the file "
                "(or remove the key to use the official default)"
            )
    for key in ("eos_token_id", "pad_token_id"):
        value = cfg.get(key)
        ids = value if isinstance(value, list) else [value]
        if value is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise CheckpointError(f"{source}: {key} is {json.dumps(value)}, expected a token id or a list of "
                                  "token ids; fix that value in the file")


def chatglm_to_glm_config(cfg: dict, source: str = "config.json", *, linear_rope: bool = False) -> GlmConfig:
    """GlmConfig for a ChatGLM3 ``config.json`` dict; refuses what GLM cannot express.

    Keys left out take the official ``ChatGLMConfig`` defaults (:data:`CHATGLM_DEFAULTS`).
    ``linear_rope``: the family divides positions by ``rope_ratio`` (ChatGLM2-6B-32k) instead of
    multiplying the base (ChatGLM3, GLM-4); transformers' linear rope scaling is exactly that.
    """
    check_config_values(cfg, _CHATGLM_VALUE_KINDS, source)
    cfg = {**CHATGLM_DEFAULTS, **cfg}
    for key, needed in _REQUIRED_CHATGLM_OPTIONS.items():
        if cfg[key] != needed:
            raise CheckpointError(
                f"{source}: {key}={json.dumps(cfg[key])} is not supported (GLM needs {key}={json.dumps(needed)}); "
                "this is not a ChatGLM2/3 architecture glmtune can load natively"
            )
    heads, multi_query = cfg["num_attention_heads"], cfg["multi_query_attention"]
    groups = cfg["multi_query_group_num"] if multi_query else heads
    if heads % groups:
        raise CheckpointError(f"{source}: num_attention_heads {heads} is not a multiple of multi_query_group_num "
                              f"{groups}; every key/value group must serve the same number of heads")
    config = GlmConfig(
        vocab_size=cfg["padded_vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["ffn_hidden_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=groups,
        head_dim=cfg["kv_channels"],
        rms_norm_eps=cfg["layernorm_epsilon"],
        attention_bias=cfg["add_qkv_bias"],
        max_position_embeddings=cfg["seq_length"],
        rope_theta=10000.0 if linear_rope else 10000.0 * float(cfg["rope_ratio"]),
        rope_scaling=_linear_rope(cfg["rope_ratio"]) if linear_rope else None,
        partial_rotary_factor=0.5,
        attention_dropout=float(cfg["attention_dropout"]),
        # The official model never ties: ChatGLMForConditionalGeneration has no output embeddings
        # for transformers to tie, whatever tie_word_embeddings says.
        tie_word_embeddings=False,
        pad_token_id=cfg.get("pad_token_id", 0) if cfg.get("pad_token_id") is not None else 0,
        eos_token_id=cfg.get("eos_token_id", 2),
        initializer_range=0.02,
    )
    # How the fused query_key_value orders its rows (see split_qkv); kept for the way back.
    config.multi_query_attention = multi_query
    return config


def _linear_rope(ratio) -> dict | None:
    return None if float(ratio) == 1.0 else {"rope_type": "linear", "factor": float(ratio)}


def rope_ratio(config: GlmConfig) -> float:
    """A THUDM config's ``rope_ratio``: the linear factor (ChatGLM2-32k), else the base over 10000."""
    params = getattr(config, "rope_parameters", None) or {}
    if params.get("rope_type") == "linear":
        return float(params["factor"])
    return rope_theta(config) / 10000.0


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
        "multi_query_attention": is_multi_query(config),
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
        "rope_ratio": rope_ratio(config),
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
    """Rows of q, k and v in a fused ``query_key_value`` (in that order only when :func:`is_multi_query`)."""
    d = config.head_dim
    return [config.num_attention_heads * d, config.num_key_value_heads * d, config.num_key_value_heads * d]


def is_multi_query(config: GlmConfig) -> bool:
    """The official ``multi_query_attention`` of a model: how its fused ``query_key_value`` orders rows.

    Recorded by :func:`chatglm_to_glm_config`; for a config without it (a native folder from
    an older glmtune), key/value heads fewer than query heads mean multi-query.
    """
    recorded = getattr(config, "multi_query_attention", None)
    return bool(recorded) if recorded is not None else config.num_key_value_heads != config.num_attention_heads


def split_qkv(fused: torch.Tensor, config: GlmConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v rows of an official fused ``query_key_value`` tensor (weight, bias or LoRA B), split on dim 0.

    As THUDM's ``SelfAttention.forward`` splits its output: with multi-query
    attention the rows are all q | all k | all v ([heads*d, groups*d, groups*d]);
    without it they are interleaved per head (viewed as [heads, 3*d]: q, k, v of
    head 0, then of head 1, ...). :func:`fuse_qkv` is the inverse, bit for bit.
    """
    heads, groups, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    sizes = qkv_split_sizes(config)
    if fused.shape[0] != sum(sizes):
        raise CheckpointError(f"fused query_key_value has {fused.shape[0]} rows, config implies {sum(sizes)}")
    if is_multi_query(config):
        q, k, v = torch.split(fused, sizes, dim=0)
        return q, k, v
    _check_interleavable(config)
    per_head = fused.reshape(heads, 3, d, *fused.shape[1:])
    q, k, v = (per_head[:, i].reshape(heads * d, *fused.shape[1:]) for i in range(3))
    return q, k, v


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: GlmConfig) -> torch.Tensor:
    """The official fused ``query_key_value`` rows for q, k, v rows (inverse of :func:`split_qkv`)."""
    if is_multi_query(config):
        return torch.cat([q, k, v], dim=0)
    _check_interleavable(config)
    heads, d = config.num_attention_heads, config.head_dim
    rest = q.shape[1:]
    return torch.stack([t.reshape(heads, d, *rest) for t in (q, k, v)], dim=1).reshape(3 * heads * d, *rest)


def _check_interleavable(config: GlmConfig) -> None:
    if config.num_key_value_heads != config.num_attention_heads:
        raise CheckpointError(
            f"multi_query_attention is false but the model has {config.num_key_value_heads} key/value heads for "
            f"{config.num_attention_heads} query heads; without multi-query attention they must be equal"
        )


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
            try:
                parts = split_qkv(tensor, config)
            except CheckpointError as exc:
                raise CheckpointError(f"{name}: {exc}") from None
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), parts):
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
        out[name] = state[parts[0]] if len(parts) == 1 else fuse_qkv(*(state[p] for p in parts), config)
    return out


def chatglm_state_dict_to_glm(state: dict[str, torch.Tensor], config: GlmConfig) -> dict[str, torch.Tensor]:
    """Native tensors for a whole ChatGLM3 state dict."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        out.update(chatglm_key_to_glm(name, tensor, config))
    return out
