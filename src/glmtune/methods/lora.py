"""LoRA (and rsLoRA, DoRA) through PEFT on the native GLM module names.

Saved folder: PEFT's own ``adapter_config.json`` + ``adapter_model.safetensors``
(keys ``base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight``, ...),
loadable by plain PEFT on transformers' ``GlmForCausalLM`` as well.

LoRA dropout: the official ChatGLM3 LoRA sits on the fused ``query_key_value``
layer, so q, k and v see one dropout mask per layer input. PEFT on the split
``q_proj``/``k_proj``/``v_proj`` would draw three (and gradient checkpointing
draws them all again), 7% of a CPU step. :class:`SharedDropout` gives the three
one mask, drawn exactly as ``nn.Dropout`` draws it, so training matches the
official dropout; it replaces PEFT's dropout module in ``lora_dropout`` (a plain
module attribute PEFT reads on each forward), nothing in PEFT is patched.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
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


# Layers that read the same input (the official fused query_key_value): one dropout mask for all of them.
SHARED_INPUT = ("q_proj", "k_proj", "v_proj")


class SharedDropout(nn.Module):
    """Dropout whose mask is drawn once per forward of ``owner`` and reused by every consumer in it.

    The mask is drawn as ``nn.Dropout`` draws it (``bernoulli_(1 - p)``, scaled by
    ``1 / (1 - p)``), so the first consumer sees exactly the mask PEFT's own dropout
    would give it. A forward pre-hook on the owner (the attention module) forgets
    the mask at each new forward, so a checkpoint recompute, whose RNG state torch
    restores, draws the same mask again; the mask is also dropped once all
    ``consumers`` have used it, so none outlives the forward.
    """

    def __init__(self, p: float, consumers: int):
        super().__init__()
        self.p, self.consumers = p, consumers
        self._mask: torch.Tensor | None = None
        self._uses = 0

    def reset(self, *_args) -> None:
        self._mask, self._uses = None, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = self._mask
        if mask is None or mask.shape != x.shape or mask.device != x.device:
            mask = torch.empty_like(x).bernoulli_(1 - self.p).div_(1 - self.p)
            self._mask, self._uses = mask, 0
        self._uses += 1
        if self._uses >= self.consumers:
            self.reset()
        return x * mask.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, consumers={self.consumers}"


def share_dropout(model: nn.Module) -> int:
    """Give the q/k/v LoRA layers of each attention module one :class:`SharedDropout`; returns how many were shared."""
    shared = 0
    for owner in model.modules():
        layers = [getattr(owner, n) for n in SHARED_INPUT if hasattr(getattr(owner, n, None), "lora_dropout")]
        for adapter in {a for layer in layers for a in layer.lora_dropout}:
            users = [layer for layer in layers if isinstance(layer.lora_dropout[adapter], nn.Dropout)]
            if len(users) < 2:
                continue
            dropout = SharedDropout(users[0].lora_dropout[adapter].p, consumers=len(users))
            owner.register_forward_pre_hook(dropout.reset)
            for layer in users:
                layer.lora_dropout[adapter] = dropout
            shared += 1
    return shared


def prepare_lora(model: nn.Module, options: LoraOptions) -> nn.Module:
    """``model`` wrapped as a PEFT model; only the LoRA (and DoRA magnitude) weights train."""
    peft_model = wrap_peft(model, lora_config(model, options))
    share_dropout(peft_model)
    return peft_model


def save_lora(model: nn.Module, out_dir: str | os.PathLike) -> list[Path]:
    out = Path(out_dir)
    # The base path is recorded for people and tools, but apply_adapter ignores it (glmtune passes the base
    # model). Embeddings are never resized, so none are saved; PEFT's "auto" would instead read the base
    # path's config.json, which for a ChatGLM3 folder has no vocab_size, and save the whole lm_head.
    model.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=False)
    return [out / "adapter_config.json", out / "adapter_model.safetensors"]
