"""LoRA dropout: q, k and v share one mask per layer input (as the official fused query_key_value LoRA)."""

from __future__ import annotations

import torch

from glmtune import load_model
from glmtune.methods import prepare
from glmtune.methods.lora import SharedDropout, lora_config, wrap_peft
from glmtune.methods.options import LoraOptions

IDS = torch.tensor([[64790, 64792, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39]] * 2)
OPTIONS = {"r": 4, "alpha": 8, "dropout": 0.5, "target": "qkv"}


def _shared():
    return prepare(load_model("tiny", dtype="fp32", seed=0), "lora", OPTIONS).model


def _unshared():
    """PEFT's own per-layer dropout (three masks per layer input)."""
    model = load_model("tiny", dtype="fp32", seed=0)
    return wrap_peft(model, lora_config(model, LoraOptions(**OPTIONS)))


def _lora_inputs(model) -> dict[str, torch.Tensor]:
    """One training forward; what each q/k/v lora_A received (the input after dropout), by module name."""
    seen: dict[str, torch.Tensor] = {}
    handles = [module.register_forward_pre_hook(lambda _m, args, name=name: seen.__setitem__(name, args[0]))
               for name, module in model.named_modules() if name.endswith("lora_A.default")]
    model.train()
    torch.manual_seed(1)
    model(input_ids=IDS, labels=IDS)
    for h in handles:
        h.remove()
    return seen


def test_q_k_v_see_one_mask_per_layer_and_layers_differ():
    model = _shared()
    assert isinstance(model.base_model.model.model.layers[0].self_attn.k_proj.lora_dropout["default"], SharedDropout)
    seen = _lora_inputs(model)
    layers = sorted({name.split(".self_attn.")[0] for name in seen})
    assert len(layers) >= 2
    for layer in layers:
        q, k, v = (seen[f"{layer}.self_attn.{p}_proj.lora_A.default"] for p in "qkv")
        assert (q == 0).float().mean() > 0.3  # dropout really acts (p = 0.5)
        assert torch.equal(q, k) and torch.equal(q, v)
    first, second = (seen[f"{layer}.self_attn.q_proj.lora_A.default"] for layer in layers[:2])
    assert not torch.equal(first == 0, second == 0)
    # PEFT's own dropout draws three different masks: the sharing is what makes them equal.
    plain = _lora_inputs(_unshared())
    q, k = (plain[f"{layers[0]}.self_attn.{p}_proj.lora_A.default"] for p in "qk")
    assert not torch.equal(q == 0, k == 0)
    # The first mask is drawn exactly as nn.Dropout draws it: layer 0's q input is PEFT's, bit for bit.
    assert torch.equal(plain[f"{layers[0]}.self_attn.q_proj.lora_A.default"],
                       seen[f"{layers[0]}.self_attn.q_proj.lora_A.default"])


def test_shared_dropout_equals_peft_without_dropout():
    shared, plain = _shared(), _unshared()
    for model in (shared, plain):
        for module in model.modules():
            if isinstance(module, (SharedDropout, torch.nn.Dropout)):
                module.p = 0.0
    grads = []
    for model in (shared, plain):
        model.train()
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_checkpoint_recompute_draws_the_same_mask():
    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = _shared().train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(3)
        model(input_ids=IDS, labels=IDS).loss.backward()
        leftover = [m for m in model.modules() if isinstance(m, SharedDropout) and m._mask is not None]
        assert not leftover  # no mask outlives the forward (or the recompute)
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, recomputed = grads(False), grads(True)
    assert any(g.abs().sum() > 0 for g in plain.values())
    for name, g in plain.items():
        assert torch.allclose(g, recomputed[name], atol=1e-6, rtol=1e-5), name
