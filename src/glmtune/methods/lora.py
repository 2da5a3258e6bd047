"""LoRA (and rsLoRA, DoRA) through PEFT on the native GLM module names.

Saved folder: PEFT's own ``adapter_config.json`` + ``adapter_model.safetensors``
(keys ``base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight``, ...),
loadable by plain PEFT on transformers' ``GlmForCausalLM`` as well.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from torch import nn

from .errors import MethodError
from .options import LoraOptions


def linear_module_names(model: nn.Module) -> list[str]:
    """Short names (last path component) of the linear layers inside the decoder layers."""
    names: list[str] = []
    for full, module in model.named_modules():
        if isinstance(module, nn.Linear) and ".layers." in f".{full}":
            short = full.rsplit(".", 1)[-1]
            if short not in names:
                names.append(short)
    return names


def lora_config(model: nn.Module, options: LoraOptions):
    """The ``peft.LoraConfig`` for ``options``; unknown target names list the available ones."""
    # deferred: peft is heavy
    from peft import LoraConfig

    targets = options.target_modules()
    available = linear_module_names(model)
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise MethodError(
            f"method option lora.target: no linear layer named {', '.join(map(repr, unknown))} in this model; "
            f"available: {', '.join(available)} (or the official names query_key_value, dense, "
            "dense_h_to_4h, dense_4h_to_h)"
        )
    return LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=targets,
        use_rslora=options.use_rslora,
        use_dora=options.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_name(model),
    )


def base_name(model: nn.Module) -> str | None:
    """The base model's path as PEFT records it (``load_model`` sets it; None for an in-memory model).

    The same rule as ``peft.get_peft_model``, so the config we build already
    holds the name PEFT would put there, and PEFT has nothing to rename or warn about.
    """
    return model.__dict__.get("name_or_path") or None


def wrap_peft(model: nn.Module, config) -> nn.Module:
    """``peft.get_peft_model`` without the deprecation noise PEFT itself causes."""
    # deferred: peft is heavy
    from peft import get_peft_model

    with warnings.catch_warnings():
        # PEFT (0.21) reads transformers 5's deprecated `is_gradient_checkpointing` property in
        # PeftModel.__init__ (peft_model.py); glmtune's own code uses is_activation_checkpointing.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


def prepare_lora(model: nn.Module, options: LoraOptions) -> nn.Module:
    """``model`` wrapped as a PEFT model; only the LoRA (and DoRA magnitude) weights train."""
    return wrap_peft(model, lora_config(model, options))


def save_lora(model: nn.Module, out_dir: str | os.PathLike) -> list[Path]:
    out = Path(out_dir)
    # The base path is recorded for people and tools, but apply_adapter ignores it (glmtune passes the base
    # model). Embeddings are never resized, so none are saved; PEFT's "auto" would instead read the base
    # path's config.json, which for a ChatGLM3 folder has no vocab_size, and save the whole lm_head.
    model.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=False)
    return [out / "adapter_config.json", out / "adapter_model.safetensors"]
