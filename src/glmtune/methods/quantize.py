"""QLoRA: the frozen base model's decoder linear layers as bitsandbytes 4-bit (NF4/FP4) or 8-bit layers.

Our models are built natively (no ``from_pretrained``), so transformers' bitsandbytes quantizer never runs;
instead each ``nn.Linear`` inside the decoder layers is swapped for a ``bnb.nn.Linear4bit`` /
``Linear8bitLt`` holding the same weight, quantized as it moves to the device: a layer at a time, so a
GPU never holds the whole full-precision model. Embeddings and the output layer stay unquantized (the
known fix for ChatGLM's quality under int4, and what keeps the logits exact). The attributes transformers'
own quantizer sets (``is_loaded_in_4bit``/``is_loaded_in_8bit``, ``quantization_method``) are set too, so
PEFT wraps the layers with its bitsandbytes LoRA layers and the Trainer does not move the model again.

k-bit preparation, as PEFT's ``prepare_model_for_kbit_training`` but without its upcast of every
half-precision weight to float32: the base is frozen here and only the method's own parameters are cast
to float32 (``cast_trainable_to_fp32`` in the training setup), which keeps the embeddings and lm_head
(1 GiB for ChatGLM3-6B) at their storage dtype; GLM's RMSNorm computes in float32 anyway.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from ..models.loading import find_glm
from .errors import MethodError

# training.optim values that run on bitsandbytes (transformers' OptimizerNames).
BNB_OPTIMIZERS = ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "paged_adamw",
                  "lion_8bit", "paged_lion_8bit", "paged_lion_32bit", "paged_ademamix_8bit", "ademamix_8bit",
                  "rmsprop_bnb_8bit", "rmsprop_bnb")
INSTALL_HINT = "pip install 'glmtune[qlora]' (bitsandbytes)"


def bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def missing_bitsandbytes(option: str) -> str | None:
    """The message for an option that needs bitsandbytes when it is not installed, else None."""
    if bitsandbytes_installed():
        return None
    return f"{option} needs bitsandbytes, which is not installed: {INSTALL_HINT}, or remove {option.split('=')[0]}"


def _quantized_linear(linear: nn.Linear, bits: int, quant_type: str, double_quant: bool,
                      compute_dtype: torch.dtype, device) -> nn.Module:
    # deferred: bitsandbytes is optional and loads native kernels
    import bitsandbytes as bnb

    has_bias = linear.bias is not None
    weight = linear.weight.data
    if bits == 4:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias, compute_dtype=compute_dtype,
                                  compress_statistics=double_quant, quant_type=quant_type, device="meta")
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=double_quant,
                                         quant_type=quant_type, module=layer).to(device)
    else:
        # threshold 6.0: LLM.int8()'s outlier decomposition, as transformers' BitsAndBytesConfig default.
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False,
                                    threshold=6.0, device="meta")
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False).to(device)
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.data.to(device), requires_grad=False)
    return layer


def quantize_model(model: nn.Module, *, bits: int, quant_type: str = "nf4", double_quant: bool = True,
                   compute_dtype: torch.dtype = torch.float32, device="cpu") -> nn.Module:
    """``model`` (a GLM on any device, usually the CPU) with its decoder linear layers quantized on ``device``.

    Everything else (embeddings, norms, lm_head) moves to ``device`` unchanged. Every weight is frozen.
    """
    if bits not in (4, 8):
        raise MethodError(f"quantization bits must be 4 or 8, got {bits!r}")
    if not bitsandbytes_installed():
        raise MethodError(missing_bitsandbytes(f"model.quantization.bits={bits}"))
    glm = find_glm(model)
    glm.requires_grad_(False)
    for layer in glm.model.layers:
        for name, module in list(layer.named_modules()):
            if type(module) is nn.Linear:  # exactly nn.Linear: never re-quantize a bnb layer
                parent_name, _, attr = name.rpartition(".")
                parent = layer.get_submodule(parent_name) if parent_name else layer
                setattr(parent, attr, _quantized_linear(module, bits, quant_type, double_quant, compute_dtype, device))
                del module
    glm.to(device)
    # What transformers' bitsandbytes quantizer sets on a model it loads: PEFT picks its bnb LoRA layers by
    # these flags, and the Trainer does not call .to() on a model marked as bitsandbytes-quantized.
    from transformers.utils.quantization_config import QuantizationMethod  # deferred: transformers is heavy

    glm.is_loaded_in_4bit, glm.is_loaded_in_8bit = bits == 4, bits == 8
    glm.quantization_method = QuantizationMethod.BITS_AND_BYTES
    return model


def quantized_bits(model: nn.Module) -> int | None:
    """4 or 8 when ``model``'s base was quantized by :func:`quantize_model`, else None."""
    glm = find_glm(model)
    if getattr(glm, "is_loaded_in_4bit", False):
        return 4
    if getattr(glm, "is_loaded_in_8bit", False):
        return 8
    return None


__all__ = ["BNB_OPTIMIZERS", "INSTALL_HINT", "bitsandbytes_installed", "missing_bitsandbytes", "quantize_model",
           "quantized_bits"]
