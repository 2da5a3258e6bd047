"""Activation checkpointing, optionally keeping each layer's attention output so the recompute skips its kernel.

Non-reentrant checkpointing of a decoder layer re-runs its whole forward in backward. The attention
kernel's results (output and log-sum-exp: a few values per token) are cheap to keep and the kernel is not
cheap to re-run (per sample on packed rows, quadratic in length), so torch's selective checkpointing
(``create_selective_checkpoint_contexts``) saves them and recomputes everything else. Exact: the same
values are used either way (tests/test_train_loop.py compares the losses with no checkpointing).
Attention that falls back to the math path (decomposed ops) is recomputed as before. torchtitan's selective
checkpointing saves the same SDPA outputs. The cost is the attention output per token and layer (hidden size
values): small next to the CPU kernel's time, but on GPUs flash attention is cheap and the memory is not
(0.66 GiB for ChatGLM3-6B at the official defaults), hence ``training.checkpoint_keep_attention``.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

_ATTENTION_OPS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                  "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
ATTENTION = frozenset(getattr(torch.ops.aten, name).default for name in _ATTENTION_OPS
                      if hasattr(torch.ops.aten, name))


def keep_attention(_ctx, op, *_args, **_kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in ATTENTION else CheckpointPolicy.PREFER_RECOMPUTE


def checkpointing_kwargs(keep: bool = True) -> dict:
    """``activation_checkpointing_kwargs`` for transformers' ``activation_checkpointing_enable``."""
    kwargs = {"use_reentrant": False}  # exact for every method (P-Tuning included), no input-grad hook needed
    if keep:
        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, keep_attention)
    return kwargs
