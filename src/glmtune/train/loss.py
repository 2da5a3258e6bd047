"""Causal-LM loss computed only where there is something to learn.

With a 65k vocabulary the output layer dominates a ChatGLM3 step: a row of
logits per token, kept for backward. Prompt tokens, padding and packing
boundaries have label -100 and contribute nothing, so their logits are never
needed.

A forward pre-hook on ``lm_head`` captures the hidden states of labelled
positions (and lets ``lm_head`` itself run on zero rows); the loss is then
the same token-level cross entropy as transformers' ``ForCausalLMLoss`` (sum
over labelled tokens / labelled tokens in the accumulated batch), computed
chunk by chunk with gradients formed on the fly, so the (tokens x 65k)
logits never exist whole. When ``lm_head`` itself trains (full fine-tuning)
its gradient is held in float32 from forward to backward (4 bytes per
weight). The hook is a plain ``torch.nn.Module`` hook, registered for one
forward call and removed right after: nothing in transformers or PEFT is
patched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.chat_format import IGNORE_INDEX
from ..models import find_glm


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Target of each position's logits: the next token's label (-100 at the end)."""
    return F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)


def find_lm_head(model: torch.nn.Module) -> torch.nn.Module:
    return find_glm(model).lm_head


def answer_only_loss(model, lm_head: torch.nn.Module, inputs: dict, num_items_in_batch=None,
                     one_head_call: bool = False) -> torch.Tensor:
    """Loss of ``model`` on ``inputs`` (which hold ``labels``), computing logits at labelled positions only.

    Normalised by ``num_items_in_batch`` when given (gradient accumulation
    across batches), else by this batch's labelled tokens. ``one_head_call``: ``lm_head`` runs once, inside
    the forward, on the labelled rows (their logits exist whole, no chunking): for DeepSpeed ZeRO-3, which
    gathers a module's partitioned weight once per forward and releases it once per backward.
    """
    inputs = dict(inputs)
    targets = shifted_targets(inputs.pop("labels"))
    keep = targets != IGNORE_INDEX

    captured: list[torch.Tensor] = []

    def capture(_module, args):
        # Keep the labelled rows for the loss below; lm_head itself then runs on zero rows.
        captured.append(args[0][keep])
        return (args[0][:0, :0] if args[0].dim() == 3 else args[0][:0],)

    def labelled_rows(_module, args):
        return (args[0][keep],)

    def logits_of(_module, _args, output):
        captured.append(output)

    handles = ([lm_head.register_forward_pre_hook(labelled_rows), lm_head.register_forward_hook(logits_of)]
               if one_head_call else [lm_head.register_forward_pre_hook(capture)])
    try:
        model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    if one_head_call:
        loss = F.cross_entropy(captured[0].float(), targets[keep], reduction="sum")
    else:
        loss = linear_cross_entropy_sum(captured[0], lm_head, targets[keep])
    if num_items_in_batch is None:
        return loss / keep.sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def _cross_entropy_grad_(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross entropy of ``logits`` (float32) against ``targets``; ``logits`` becomes its gradient, in place.

    d(sum CE)/d logits = softmax - onehot. Everything happens in the one chunk-sized buffer: a
    log_softmax would allocate a second one (for the 78.7M bench model's 512 x 65k chunks, 133 MB of
    peak memory, and on CPU the page faults of a fresh buffer for every chunk).
    """
    rows = torch.arange(targets.shape[0], device=targets.device)
    picked = logits[rows, targets]
    top = logits.amax(dim=-1)
    logits.sub_(top.unsqueeze(1)).exp_()
    norm = logits.sum(dim=-1)
    logits.div_(norm.unsqueeze(1))
    logits[rows, targets] -= 1
    return (norm.log() + top - picked).sum()


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Sum of cross entropies of ``hidden @ weight.T`` against ``targets``, a chunk of rows at a time.

    Gradients are computed during the forward pass, chunk by chunk, so the
    (tokens x vocabulary) logits never exist whole: memory is one chunk of
    logits (one buffer, reused by every chunk) plus a gradient the size of ``hidden``, and no extra
    matmul is spent (the same approach as Liger-Kernel's fused linear cross entropy).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int):
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        # One logits buffer for all chunks, written in place (``out=``) where the dtypes allow (not in half
        # precision or under autocast): a fresh (chunk x 65k) result per chunk would keep the previous chunk's
        # alive and pay its page faults again (in isolation on CPU, a third of the matmul's speed).
        in_place = hidden.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled(hidden.device.type)
        buffer = hidden.new_empty((min(chunk_size, hidden.shape[0]), weight.shape[0]), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]
            logits, rows = buffer[: h.shape[0]], slice(start, start + chunk_size)
            if in_place:
                torch.mm(h, weight.t(), out=logits)
            else:
                logits.copy_(h @ weight.t())
            total += _cross_entropy_grad_(logits, targets[rows])
            grad_logits = logits.to(h.dtype)  # no copy in float32
            if in_place:
                torch.mm(grad_logits, weight, out=grad_hidden[rows])
            else:
                grad_hidden[rows] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight if grad_weight is not None else torch.empty(0))
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = grad_hidden * grad_output.to(grad_hidden.dtype)
        # In place: no second lm_head-sized buffer (a retained graph is never backpropagated twice in training).
        gw = grad_weight.mul_(grad_output).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None


def _fp16_compute(hidden: torch.Tensor) -> bool:
    """Whether the output layer runs in fp16: fp16 hidden states, or fp16 autocast over fp32 ones."""
    device = hidden.device.type
    return hidden.dtype == torch.float16 or (
        torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16)


def linear_cross_entropy_sum(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor,
                             chunk_size: int = 512) -> torch.Tensor:
    """Summed cross entropy of ``lm_head(hidden)`` against ``targets`` (all valid), memory-light when possible."""
    weight = getattr(lm_head, "weight", None)
    plain = type(lm_head) is torch.nn.Linear and lm_head.bias is None and weight is not None and weight.dim() == 2
    # Plain path when lm_head is wrapped (e.g. LoRA on it) or partitioned (ZeRO-3), and in fp16: the fused
    # gradients are formed before the loss scale is applied, and fp16 would flush 1/65k-sized ones to zero.
    if not plain or weight.numel() == 0 or _fp16_compute(hidden):
        return F.cross_entropy(lm_head(hidden).float(), targets, reduction="sum")
    return _FusedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size)
