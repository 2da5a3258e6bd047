"""The answer-only training loss equals transformers' full-logits loss, for every model wrapper."""

from __future__ import annotations

import pytest
import torch

import glmtune
from glmtune.methods import prepare
from glmtune.train.loss import answer_only_loss, find_lm_head


def _batch():
    torch.manual_seed(0)
    ids = torch.randint(5, 60000, (3, 12))
    labels = ids.clone()
    labels[:, :5] = -100          # prompt
    labels[2, 9:] = -100          # padding of a shorter row
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("method", ["full", "lora", "ptuning"])
def test_answer_only_loss_equals_full_loss_and_gradients(method):
    options = {"ptuning": {"num_virtual_tokens": 4, "prefix_dropout": 0.0}, "lora": {"dropout": 0.0}}.get(method)  # no dropout noise
    model = prepare(glmtune.load_model("tiny", dtype="fp32"), method, options).model
    model.train()
    batch = _batch()
    reference = model(**batch).loss
    ref_grads = torch.autograd.grad(reference, [p for p in model.parameters() if p.requires_grad])
    loss = answer_only_loss(model, find_lm_head(model), batch)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    assert abs(loss.item() - reference.item()) <= 1e-5
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    # Normalising by a count across accumulated batches divides the summed loss by that count.
    n = int((batch["labels"][:, 1:] != -100).sum())
    summed = answer_only_loss(model, find_lm_head(model), batch, num_items_in_batch=torch.tensor(2 * n))
    assert abs(summed.item() * 2 - loss.item()) <= 1e-5
    # The hook is gone afterwards: a plain forward gives full-length logits again.
    assert model(input_ids=batch["input_ids"]).logits.shape[:2] == (3, 12)


@pytest.mark.parametrize("trainable_weight", [True, False])
def test_chunked_linear_cross_entropy_matches_plain(trainable_weight):
    from glmtune.train.loss import linear_cross_entropy_sum

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    head.weight.requires_grad_(trainable_weight)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    reference = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    wanted = [hidden] + ([head.weight] if trainable_weight else [])
    ref_grads = torch.autograd.grad(reference * 0.5, wanted)
    loss = linear_cross_entropy_sum(hidden, head, targets, chunk_size=5)  # 5 chunks, the last partial
    grads = torch.autograd.grad(loss * 0.5, wanted)
    assert torch.allclose(loss, reference, atol=1e-4)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_fp16_uses_the_autograd_path_so_loss_scaling_protects_small_gradients():
    from glmtune.train import loss as loss_module

    head = torch.nn.Linear(8, 40, bias=False).half()
    hidden = torch.randn(6, 8, dtype=torch.float16, requires_grad=True)
    targets = torch.randint(0, 40, (6,))
    calls = []
    original = loss_module._FusedLinearCrossEntropy.apply
    loss_module._FusedLinearCrossEntropy.apply = lambda *a: calls.append(a) or original(*a)
    try:
        out = loss_module.linear_cross_entropy_sum(hidden, head, targets)
        with torch.autocast("cpu", dtype=torch.float16):  # fp32 weights under fp16 autocast: not fused either
            loss_module.linear_cross_entropy_sum(hidden.float().detach(), head.float(), targets)
        loss_module.linear_cross_entropy_sum(hidden.float(), head.float(), targets)
    finally:
        loss_module._FusedLinearCrossEntropy.apply = original
    assert len(calls) == 1  # only the fp32 call was fused
    (out * 1024).backward()  # a scaled loss, as GradScaler does: gradients are formed after scaling
    assert hidden.grad.dtype == torch.float16 and torch.isfinite(hidden.grad).all()


def test_cross_entropy_gradient_in_place_matches_autograd_and_stays_finite():
    """The fused loss turns its one logits buffer into the gradient in place (no second chunk-sized buffer)."""
    from glmtune.train.loss import _cross_entropy_grad_

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 30
    logits[0, 3] = 1e4  # large logits: the max is taken out before exp
    targets = torch.tensor([3, 0, 49, 7, 7, 20])
    reference = logits.clone().requires_grad_(True)
    expected = torch.nn.functional.cross_entropy(reference, targets, reduction="sum")
    expected.backward()
    buffer = logits.clone()
    ptr = buffer.data_ptr()
    loss = _cross_entropy_grad_(buffer, targets)
    assert buffer.data_ptr() == ptr and torch.isfinite(buffer).all()
    assert torch.allclose(loss, expected, rtol=1e-5) and torch.allclose(buffer, reference.grad, atol=1e-6)


def test_the_fused_loss_writes_every_chunk_into_one_logits_buffer():
    """A fresh (chunk x vocabulary) result per chunk costs memory and page faults: one buffer serves all chunks."""
    from torch.profiler import ProfilerActivity, profile

    from glmtune.train.loss import linear_cross_entropy_sum

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 5000, bias=False).requires_grad_(False)
    hidden = torch.randn(40, 16, requires_grad=True)
    targets = torch.randint(0, 5000, (40,))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = linear_cross_entropy_sum(hidden, head, targets, chunk_size=8)  # 5 chunks of 8 x 5000 logits
    allocated = sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0 and not e.cpu_children)
    one_chunk = 8 * 5000 * 4
    assert one_chunk <= allocated < 1.5 * one_chunk
    reference = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    assert torch.allclose(loss, reference, rtol=1e-5)


def test_bf16_fused_loss_matches_the_float32_computation():
    """bf16 weights and hidden states (GPU training) take the copy path into the float32 buffer."""
    from glmtune.train.loss import linear_cross_entropy_sum

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).bfloat16().requires_grad_(False)
    hidden = torch.randn(23, 16).bfloat16().requires_grad_(True)
    targets = torch.randint(0, 50, (23,))
    loss = linear_cross_entropy_sum(hidden, head, targets, chunk_size=5)
    (grad,) = torch.autograd.grad(loss, [hidden])
    ref_hidden = hidden.detach().float().requires_grad_(True)
    reference = torch.nn.functional.cross_entropy(ref_hidden @ head.weight.float().t(), targets, reduction="sum")
    (ref_grad,) = torch.autograd.grad(reference, [ref_hidden])
    assert torch.allclose(loss, reference, rtol=1e-3)
    assert grad.dtype == torch.bfloat16 and torch.allclose(grad.float(), ref_grad, atol=2e-2)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_one_head_call_loss_equals_the_fused_loss_with_lm_head_run_once(method):
    """DeepSpeed ZeRO-3 allows one lm_head call per forward: that path computes the same loss and gradients."""
    options = {"lora": {"dropout": 0.0}}.get(method)
    model = prepare(glmtune.load_model("tiny", dtype="fp32"), method, options).model.train()
    head, batch = find_lm_head(model), _batch()
    trained = [p for p in model.parameters() if p.requires_grad]
    fused = answer_only_loss(model, head, batch)
    fused_grads = torch.autograd.grad(fused, trained)
    calls = []
    counter = head.register_forward_hook(lambda _m, _a, out: calls.append(tuple(out.shape)))
    try:
        once = answer_only_loss(model, head, batch, one_head_call=True)
    finally:
        counter.remove()
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert calls == [(labelled, head.out_features)]  # one call, on the labelled rows only
    assert abs(once.item() - fused.item()) <= 1e-5
    for a, b in zip(torch.autograd.grad(once, trained), fused_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
