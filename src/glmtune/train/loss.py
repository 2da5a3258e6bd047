"""Causal-LM loss computed only where there is something to learn.

With a 65k vocabulary the output layer dominates a ChatGLM3 step: a row of
logits per token, kept for backward. Prompt tokens, padding and packing
boundaries have label -100 and contribute nothing, so their logits are never
needed. A forward pre-hook on ``lm_head`` hands it only the hidden states of
labelled positions, then the loss is the same token-level cross entropy
(sum over labelled tokens / number of labelled tokens in the accumulated
batch) as transformers' ``ForCausalLMLoss``.

The hook is a plain ``torch.nn.Module`` hook, registered for one forward
call and removed right after: nothing in transformers or PEFT is patched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Target of each position's logits: the next token's label (-100 at the end)."""
    return F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)


def find_lm_head(model: torch.nn.Module) -> torch.nn.Module:
    from ..methods.ptuning import find_glm

    return find_glm(model).lm_head


def answer_only_loss(model, lm_head: torch.nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """Loss of ``model`` on ``inputs`` (which hold ``labels``), computing logits at labelled positions only.

    Normalised by ``num_items_in_batch`` when given (gradient accumulation
    across batches), else by this batch's labelled tokens.
    """
    inputs = dict(inputs)
    targets = shifted_targets(inputs.pop("labels"))
    keep = targets != IGNORE_INDEX

    def select(_module, args):
        return (args[0][keep],)

    handle = lm_head.register_forward_pre_hook(select)
    try:
        logits = model(**inputs).logits
    finally:
        handle.remove()
    loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    if num_items_in_batch is None:
        return loss / keep.sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch
