"""Memory savers of a run: QLoRA's quantized base, bitsandbytes optimizers, activations kept in CPU memory.

Checked before anything loads (:func:`check_memory_options`), applied around the model load
(:func:`load_base`) and after the method is applied (:func:`offload_activations`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError, TrainConfig
from ..methods.quantize import BNB_OPTIMIZERS, missing_bitsandbytes, quantize_model
from ..models import load_model
from ..models.loading import resolve_dtype


def check_memory_options(cfg: TrainConfig) -> None:
    """Refuse, before the model loads, memory options this install or this method cannot honour."""
    q, t = cfg.model.quantization, cfg.training
    wanted = []
    if q.bits:
        wanted.append(("model.quantization.bits", f"model.quantization.bits={q.bits}"))
    if t.optim in BNB_OPTIMIZERS:
        wanted.append(("training.optim", f"training.optim={t.optim}"))
    for key, option in wanted:
        message = missing_bitsandbytes(option)
        if message:
            raise ConfigError(message, key=key)
    if q.bits == 8 and cfg.method.name == "lora" and cfg.method.options.use_dora:
        # PEFT's DoRA re-reads the int8 weight each step and loses bitsandbytes' row scales (state.SCB) on the
        # second forward pass (bitsandbytes 0.50, PEFT 0.21): refused rather than failing mid-run.
        raise ConfigError("method.lora.use_dora with model.quantization.bits=8 is not supported (PEFT's DoRA "
                          "loses the 8-bit layers' scales); use model.quantization.bits=4 for DoRA, or plain LoRA "
                          "on 8 bits", key="method.lora.use_dora")


def compute_dtype(cfg: TrainConfig, compute: str) -> torch.dtype:
    """The dtype 4-bit layers compute in: the option, or the run's compute precision."""
    wanted = cfg.model.quantization.compute_dtype
    return resolve_dtype(compute if wanted == "auto" else wanted, "cpu", None)


def load_base(cfg: TrainConfig, precision, device: str, vocab_size: int | None) -> nn.Module:
    """The base model on ``device``; with ``model.quantization``, read into CPU memory and quantized layer by
    layer onto ``device``, so the device never holds the full-precision model."""
    q = cfg.model.quantization
    model = load_model(cfg.model.path, dtype=precision.storage, device="cpu" if q.bits else device,
                       vocab_size=vocab_size, seed=cfg.training.seed, family=cfg.model.family or None)
    if q.bits:
        model = quantize_model(model, bits=q.bits, quant_type=q.type, double_quant=q.double_quant,
                               compute_dtype=compute_dtype(cfg, precision.compute), device=device)
    return model


class _SaveOnCpu:
    """Forward hooks that keep the tensors autograd saves during a training forward pass in CPU memory."""

    def __init__(self, pin_memory: bool):
        self.pin_memory = pin_memory
        self.active = None

    def enter(self, module, args):
        if module.training and torch.is_grad_enabled() and self.active is None:
            self.active = torch.autograd.graph.save_on_cpu(pin_memory=self.pin_memory)
            self.active.__enter__()

    def exit(self, module, args, output):
        if self.active is not None:
            self.active.__exit__(None, None, None)
            self.active = None


def offload_activations(model: nn.Module, device: str) -> _SaveOnCpu:
    """Keep ``model``'s saved activations in (pinned, on CUDA) CPU memory during training forward passes.

    Backward copies each back when it needs it (torch's ``save_on_cpu``). Hooks, not a wrapper, so the
    Trainer, saving and every method see the model unchanged; evaluation (no grad) is not affected.
    """
    saver = _SaveOnCpu(pin_memory=device.startswith("cuda"))
    model.register_forward_pre_hook(saver.enter)
    model.register_forward_hook(saver.exit, always_call=True)
    return saver


__all__ = ["check_memory_options", "compute_dtype", "load_base", "offload_activations"]
