"""The public facade: load a model together with a fine-tuning result (litgpt's ``api.py`` pattern).

:func:`glmtune.models.load_model` loads base models only; composing a LoRA adapter, a freeze/full result
or a P-Tuning prefix onto one belongs to :mod:`glmtune.methods`, which sits above the models layer. This
module joins the two, so neither imports the other upwards. ``glmtune.load_model`` is this function.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from .methods.ptuning_io import apply_prefix
from .methods.ptuning_peft import apply_peft_prefix, is_peft_prefix
from .methods.quantize import missing_bitsandbytes, quantize_model
from .methods.registry import detect_method, load_trained
from .models import CheckpointError, prefix_length
from .models import load_model as load_base_model


def load_model(
    path: str | os.PathLike,
    *,
    dtype=None,
    device: str | torch.device = "cpu",
    adapter: str | os.PathLike | None = None,
    prefix: str | os.PathLike | None = None,
    vocab_size: int | None = None,
    seed: int = 0,
    family: str | None = None,
    quantization: int | None = None,
):
    """Load a GLM-family model natively, as transformers' ``GlmForCausalLM`` in eval mode, tuned if asked.

    ``path``, ``dtype``, ``device``, ``vocab_size`` and ``seed`` are those of
    :func:`glmtune.models.load_model` (a ChatGLM3 or native GLM folder, or a named shape).
    ``adapter`` applies any fine-tuning result folder (LoRA, freeze, full or P-Tuning from glmtune,
    PEFT or official ChatGLM3 adapters; see :func:`glmtune.methods.load_trained`), ``prefix`` a
    P-Tuning v2 prefix (also a whole official P-Tuning checkpoint folder, which may be ``path`` itself, or GLM-4's
    official PEFT prefix-tuning folder). ``family`` forces the model family where the folder does not tell it.
    ``quantization`` (4 or 8): the base's decoder linear layers through bitsandbytes (NF4 / int8), as QLoRA
    trains them, so a model trained on a small GPU also answers on it; LoRA and P-Tuning results apply on top.
    """
    if adapter is not None and prefix is not None:
        raise CheckpointError(f"give either adapter ({adapter}) or prefix ({prefix}), not both: a model is "
                              "fine-tuned by one method at a time")
    if quantization is not None:
        check_quantized_answering(quantization, adapter)
        if dtype in (None, "auto") and torch.device(device).type != "cpu":
            dtype = torch.bfloat16  # QLoRA's compute dtype on a GPU; the base is read on the CPU in it
    model = load_base_model(path, dtype=dtype, device="cpu" if quantization is not None else device,
                            vocab_size=vocab_size, seed=seed, family=family)
    if quantization is not None:  # layer by layer onto the device: it never holds the full-precision decoder
        model = quantize_model(model, bits=quantization, compute_dtype=model.dtype, device=device).eval()
    if adapter is not None:
        return load_trained(model, adapter)
    if prefix is not None:
        # GLM-4's official P-Tuning v2 is PEFT prefix tuning: the same per-layer prefix in PEFT's files.
        return apply_peft_prefix(model, prefix) if is_peft_prefix(prefix) else apply_prefix(model, prefix)
    if length := prefix_length(path):
        warnings.warn(f"glmtune: {path} holds a P-Tuning v2 prefix (pre_seq_len {length} in its config.json), "
                      f"which was not applied; to use it pass the same folder as the prefix too "
                      f"(--prefix {path}, or prefix= in Python)", stacklevel=2)
    return model


def check_quantized_answering(bits, adapter, option: str = "quantization") -> None:
    """Refuse, before the base loads, what cannot run on a quantized base: bad bits, no bitsandbytes, results that
    replace base weights (freeze, full), DoRA on 8 bits (PEFT's DoRA loses the int8 layers' scales)."""
    if bits not in (4, 8):
        raise CheckpointError(f"{option} must be 4 or 8 (bits), got {bits!r}")
    if message := missing_bitsandbytes(f"{option}={bits}"):
        raise CheckpointError(message)
    if adapter is None:
        return
    folder = Path(adapter)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: fine-tuning result folder not found")
    method = detect_method(folder)
    if method in ("full", "freeze"):
        raise CheckpointError(f"{adapter} is a {method} fine-tuning result: it replaces base weights, which a "
                              "quantized base no longer holds; load it without quantization (or load the model "
                              "its export wrote, quantized)")
    config = folder / "adapter_config.json"
    if bits == 8 and config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("use_dora"):
        raise CheckpointError(f"{adapter} is a DoRA adapter: on an 8-bit base PEFT's DoRA loses the layers' "
                              f"scales; use {option}=4")


__all__ = ["check_quantized_answering", "load_model"]
