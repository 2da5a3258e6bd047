"""Named model shapes for random initialisation (demos, tests, benchmarks).

Each shape is a ChatGLM3 ``config.json``-style dict, so a shape goes through
the very same conversion as a real checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import Glm4Config, GlmConfig

_CHATGLM3_6B = {
    "padded_vocab_size": 65024,
    "hidden_size": 4096,
    "ffn_hidden_size": 13696,
    "num_layers": 28,
    "num_attention_heads": 32,
    "kv_channels": 128,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "layernorm_epsilon": 1e-5,
    "add_qkv_bias": True,
    "seq_length": 8192,
    "rope_ratio": 1,
}

_GLM4_9B = {
    **_CHATGLM3_6B,
    "padded_vocab_size": 151552,
    "num_layers": 40,
    "seq_length": 131072,
    "rope_ratio": 500,
    "layernorm_epsilon": 1.5625e-07,
}

# GLM-4-0414 is transformers' own Glm4ForCausalLM: its shapes are Glm4Config arguments (marked by model_type).
_GLM4_0414_9B = {
    "model_type": "glm4",
    "vocab_size": 151552,
    "hidden_size": 4096,
    "intermediate_size": 13696,
    "num_hidden_layers": 40,
    "num_attention_heads": 32,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "attention_bias": True,
}

SHAPES: dict[str, dict] = {
    "chatglm2-6b": {**_CHATGLM3_6B, "seq_length": 32768},
    "chatglm3-6b": _CHATGLM3_6B,
    "chatglm3-6b-base": _CHATGLM3_6B,
    "chatglm3-6b-32k": {**_CHATGLM3_6B, "seq_length": 32768, "rope_ratio": 50},
    "glm-4-9b": _GLM4_9B,  # = glm-4-9b-chat
    "glm-4-9b-chat": _GLM4_9B,
    "glm-4-9b-base": {**_GLM4_9B, "rope_ratio": 1, "seq_length": 8192},
    "glm-4-9b-chat-1m": {**_GLM4_9B, "rope_ratio": 10000, "seq_length": 1048576},
    # Same dimensions as ../shared/fixtures/glm4-tiny.
    "glm4-tiny": {**_GLM4_9B, "num_layers": 2, "hidden_size": 12, "num_attention_heads": 4, "kv_channels": 16,
                  "ffn_hidden_size": 32},
    "glm-4-9b-0414": _GLM4_0414_9B,
    "glm-4-32b-0414": {**_GLM4_0414_9B, "hidden_size": 6144, "intermediate_size": 23040, "num_hidden_layers": 61,
                       "num_attention_heads": 48, "num_key_value_heads": 2},
    "glm4-0414-tiny": {**_GLM4_0414_9B, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "head_dim": 8, "max_position_embeddings": 1024},
    # ~1B parameters: the loading benchmark's checkpoint.
    "chatglm3-1b": {**_CHATGLM3_6B, "num_layers": 3},
    # The training benchmark's model (78.7M parameters).
    "chatglm3-bench": {
        **_CHATGLM3_6B,
        "num_layers": 4,
        "hidden_size": 512,
        "num_attention_heads": 8,
        "kv_channels": 64,
        "ffn_hidden_size": 1536,
    },
    # Same dimensions as ../shared/fixtures/chatglm3-tiny.
    "tiny": {
        **_CHATGLM3_6B,
        "num_layers": 2,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "kv_channels": 8,
        "ffn_hidden_size": 64,
        "seq_length": 1024,
    },
    # Small enough to train on two CPU cores in seconds, big enough to learn a few answers.
    "small": {
        **_CHATGLM3_6B,
        "num_layers": 2,
        "hidden_size": 128,
        "num_attention_heads": 4,
        "kv_channels": 32,
        "ffn_hidden_size": 384,
        "seq_length": 2048,
    },
}


def shape_config(name: str, *, vocab_size: int | None = None) -> GlmConfig | Glm4Config:
    """GlmConfig of a named shape; ``vocab_size`` overrides the shape's (for small tokenizers)."""
    # Deferred: convert imports torch and transformers; the shape names alone (config checks) need neither.
    from .convert import CheckpointError, chatglm_to_glm_config

    if name not in SHAPES:
        raise CheckpointError(f"unknown model shape {name!r}; known shapes: {', '.join(SHAPES)}")
    cfg = dict(SHAPES[name])
    if cfg.get("model_type") == "glm4":
        # Deferred as above: transformers.
        from transformers import Glm4Config

        cfg.pop("model_type")
        config = Glm4Config(**cfg)
        if vocab_size is not None:
            # Glm4Config's token ids are GLM-4's (151329...); a small tokenizer's vocabulary has no such ids.
            config.vocab_size = vocab_size
            config.pad_token_id = None if (config.pad_token_id or 0) >= vocab_size else config.pad_token_id
        return config
    if vocab_size is not None:
        cfg["padded_vocab_size"] = vocab_size
    return chatglm_to_glm_config(cfg, source=f"shape {name}")
