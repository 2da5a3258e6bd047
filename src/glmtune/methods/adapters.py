"""Applying saved LoRA adapters (glmtune/PEFT or official ChatGLM3 ones) and merging them.

Official ChatGLM3 adapters target the fused ``query_key_value``; they are
converted exactly: ``lora_A`` is copied to each of q/k/v (they share the input)
and ``lora_B`` split by rows [heads*d, groups*d, groups*d], as the base weight
itself is split (see ``glmtune.models.convert``). ``base_model_name_or_path``
in ``adapter_config.json`` is never used to load anything: the base model is
the one passed in, and ``resize_token_embeddings`` is never called.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from ..models.checkpoint import iter_tensors
from ..models.convert import CheckpointError, qkv_split_sizes
from .errors import MethodError
from .options import OFFICIAL_MODULE_NAMES

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_OFFICIAL_KEY = re.compile(r"^base_model\.model\.transformer\.encoder\.layers\.(\d+)\.(self_attention|mlp)\."
                           r"(query_key_value|dense|dense_h_to_4h|dense_4h_to_h)\.(lora_A|lora_B|lora_magnitude_vector)"
                           r"(\.weight)?$")
_NATIVE_PARENT = {"query_key_value": "self_attn", "dense": "self_attn", "dense_h_to_4h": "mlp", "dense_4h_to_h": "mlp"}


def adapter_weights_file(folder: Path) -> Path:
    for name in ADAPTER_FILES:
        if (folder / name).is_file():
            return folder / name
    raise MethodError(f"{folder}: adapter weights missing (expected {' or '.join(ADAPTER_FILES)})")


def read_adapter_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise MethodError(f"{path}: file not found (a LoRA adapter folder holds adapter_config.json "
                          "and adapter_model.safetensors, as PEFT saves them)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MethodError(f"{path}: invalid JSON ({exc})") from None
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        hint = " (a P-Tuning v2 prefix loads with --prefix / prefix=DIR)" if "PREFIX" in peft_type else ""
        raise MethodError(f"{path}: peft_type {peft_type!r} is not supported as an adapter; only LORA{hint}")
    if cfg.get("bias", "none") != "none":
        raise MethodError(f"{path}: bias {cfg['bias']!r} adapters also change base biases; only bias 'none' is supported")
    return cfg


def read_adapter_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        return dict(iter_tensors(path))
    except CheckpointError as exc:
        raise MethodError(str(exc)) from None


def is_official(cfg: dict, state: dict[str, torch.Tensor]) -> bool:
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    return any(t in OFFICIAL_MODULE_NAMES for t in targets) or any(".transformer.encoder." in k for k in state)


def convert_official_state(state: dict[str, torch.Tensor], config, source: Path) -> dict[str, torch.Tensor]:
    """Native PEFT keys for an official ChatGLM3 LoRA state dict (exact: A copied, B split by rows)."""
    out: dict[str, torch.Tensor] = {}
    sizes = qkv_split_sizes(config)
    for name, tensor in state.items():
        m = _OFFICIAL_KEY.match(name)
        if not m:
            raise MethodError(f"{source}: unexpected tensor {name!r} in an official ChatGLM3 LoRA adapter")
        layer, _, module, kind, suffix = m.groups()
        suffix = suffix or ""
        prefix = f"base_model.model.model.layers.{layer}.{_NATIVE_PARENT[module]}."
        natives = OFFICIAL_MODULE_NAMES[module]
        if module != "query_key_value":
            out[f"{prefix}{natives[0]}.{kind}{suffix}"] = tensor
        elif kind == "lora_A":
            for proj in natives:
                out[f"{prefix}{proj}.{kind}{suffix}"] = tensor.clone()
        else:
            if tensor.shape[0] != sum(sizes):
                raise MethodError(
                    f"{source}: {name} has {tensor.shape[0]} rows, but this base model's query_key_value has "
                    f"{sum(sizes)}; the adapter was trained for a different base model shape"
                )
            for proj, part in zip(natives, torch.split(tensor, sizes, dim=0)):
                out[f"{prefix}{proj}.{kind}{suffix}"] = part.contiguous()
    return out


def peft_config_from(cfg: dict, official: bool, base_path: str | None):
    from peft import LoraConfig

    known = {f.name for f in dataclasses.fields(LoraConfig)}
    values = {k: v for k, v in cfg.items() if k in known and k not in ("peft_type", "auto_mapping", "revision")}
    if official:
        targets = cfg.get("target_modules") or []
        targets = [targets] if isinstance(targets, str) else targets
        values["target_modules"] = [n for t in targets for n in OFFICIAL_MODULE_NAMES.get(t, [t])]
    values["base_model_name_or_path"] = base_path
    values["inference_mode"] = True
    return LoraConfig(**values)


def check_shapes(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Compare adapter tensors with the layers they attach to, before PEFT sees them."""
    modules = dict(model.named_modules())
    for name, tensor in state.items():
        m = re.match(r"^base_model\.model\.(.+)\.(lora_A|lora_B|lora_magnitude_vector)(?:\.weight)?$", name)
        if not m or m.group(1) not in modules:
            raise MethodError(f"{source}: tensor {name!r} matches no layer of this base model; "
                              "the adapter was trained for a different model")
        layer = modules[m.group(1)]
        kind = m.group(2)
        size = layer.in_features if kind == "lora_A" else layer.out_features
        got = tensor.shape[1] if kind == "lora_A" else tensor.shape[0]
        if got != size:
            raise MethodError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, but the base layer {m.group(1)} is "
                f"{layer.in_features} -> {layer.out_features}; the adapter was trained for a different base model shape"
            )


def apply_adapter(model: nn.Module, adapter_dir: str | os.PathLike, *, base_path_override: str | None = None):
    """``model`` with the LoRA adapter in ``adapter_dir`` applied (a PEFT model in eval mode, nothing trainable).

    ``base_path_override`` is only recorded in the PEFT config (for a later
    ``save_pretrained``); the adapter's own ``base_model_name_or_path`` is ignored.
    """
    from peft import set_peft_model_state_dict

    from .lora import base_name, wrap_peft

    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise MethodError(f"{folder}: adapter folder not found")
    cfg = read_adapter_config(folder)
    path = adapter_weights_file(folder)
    state = read_adapter_state(path)
    official = is_official(cfg, state)
    if official:
        state = convert_official_state(state, model.config, path)
    check_shapes(model, state, path)
    # PEFT records the base model's own name here; the override replaces it afterwards.
    peft_model = wrap_peft(model, peft_config_from(cfg, official, base_name(model)))
    if base_path_override is not None:
        peft_model.peft_config["default"].base_model_name_or_path = str(base_path_override)
    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise MethodError(f"{path}: adapter is missing tensors, e.g. {missing[0]}")
    peft_model.requires_grad_(False)
    peft_model.eval()
    return peft_model


def merge_adapter(model: nn.Module):
    """A plain ``GlmForCausalLM`` with LoRA/DoRA merged into its weights (for export)."""
    from peft import PeftModel
    from transformers import GlmForCausalLM

    from .ptuning import PrefixModel

    if isinstance(model, PrefixModel):
        raise MethodError(
            "a P-Tuning v2 model cannot be merged: its prefix is extra keys/values per layer, not a weight change. "
            "Options: serve or chat with the base model plus --prefix DIR, or export the base model and ship the "
            "prefix folder (prefix_encoder.safetensors + config.json) beside it, or fine-tune with LoRA to get a "
            "mergeable result"
        )
    if isinstance(model, PeftModel):
        merged = model.merge_and_unload()
        merged.eval()
        return merged
    if isinstance(model, GlmForCausalLM):
        return model
    raise MethodError(f"cannot merge a {type(model).__name__}; expected a LoRA (PEFT) model or GlmForCausalLM")
