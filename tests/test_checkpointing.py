"""glmtune's activation checkpointing: the recompute skips the attention kernel and changes no value."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import glmtune
from glmtune.methods import prepare
from glmtune.models.checkpointing import ATTENTION, checkpointing_kwargs


class CountAttention(TorchDispatchMode):
    """Counts attention kernels that really run (selective checkpointing serves kept results before this mode)."""

    def __init__(self):
        super().__init__()
        self.runs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.runs += func in ATTENTION
        return func(*args, **(kwargs or {}))


def _step(method: str, kwargs: dict | None):
    options = {"lora": {"dropout": 0.1}, "ptuning": {"num_virtual_tokens": 4}}[method]
    torch.manual_seed(0)
    model = prepare(glmtune.load_model("tiny", dtype="fp32"), method, options).model.train()
    if kwargs is not None:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    ids = torch.randint(5, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)  # the same dropout masks in every variant (checkpointing restores the RNG for its recompute)
    with CountAttention() as counter:
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return counter.runs, loss.item(), grads


@pytest.mark.parametrize("method", ["lora", "ptuning"])
def test_the_recompute_keeps_attention_outputs_and_gradients_are_unchanged(method):
    layers = glmtune.load_model("tiny", dtype="fp32").config.num_hidden_layers
    plain_runs, plain_loss, plain_grads = _step(method, None)
    full_runs, _, _ = _step(method, checkpointing_kwargs(keep=False))
    kept_runs, kept_loss, kept_grads = _step(method, checkpointing_kwargs())
    assert plain_runs == layers and full_runs == 2 * layers  # plain recompute runs every kernel again
    assert kept_runs == layers  # glmtune's runs each attention kernel once
    assert kept_loss == plain_loss
    for a, b in zip(kept_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_keeping_attention_is_on_for_cpu_runs_and_off_on_gpus_unless_set():
    from glmtune.config import load_config
    from glmtune.config.schema import keeps_attention

    def training(*overrides):
        data = {"model": {"path": "tiny"}, "data": {"train_file": "t.jsonl"}}
        return load_config(data, list(overrides), check_files=False).training

    assert keeps_attention(training(), "cpu") and not keeps_attention(training(), "cuda")
    assert keeps_attention(training("training.checkpoint_keep_attention=true"), "cuda")
    assert not keeps_attention(training("training.checkpoint_keep_attention=false"), "cpu")


def test_the_planner_counts_kept_attention_outputs():
    from dataclasses import replace

    from glmtune.train.plan import Setup, estimate, model_shape

    shape = model_shape("chatglm3-6b")
    setup = Setup(batch=4, length=769, answer_length=512, checkpointing=True)
    extra = estimate(shape, replace(setup, keep_attention=True)).activations - estimate(shape, setup).activations
    # bf16 attention output (4096 values) + float32 log-sum-exp (32 heads) per token, in each of the 28 layers
    assert extra == 28 * 4 * 769 * (2 * 4096 + 4 * 32)
