"""``prepare``, ``Prepared.save``, method files and ``load_trained``, over the registry in :mod:`.catalog`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..version import __version__
from .catalog import METHODS, Method, canonical_name, get_method
from .errors import MethodError
from .freeze import WEIGHTS_FILE
from .options import options_from_dict, options_to_dict
from .ptuning_io import PREFIX_FILE

METHOD_FILE = "glmtune_method.json"


def make_options(name: str, options: Any = None) -> Any:
    """Options for method ``name`` from None (defaults), a dict, or the options dataclass itself."""
    method = get_method(name)
    if options is None:
        return method.options_type()
    if isinstance(options, dict):
        return options_from_dict(method.options_type, options, name)
    if not isinstance(options, method.options_type):
        raise MethodError(f"method {name!r} takes {method.options_type.__name__}, got {type(options).__name__}")
    return options


@dataclass
class Prepared:
    """A model ready for the Trainer, and how to save what it trains.

    ``model`` is the ``nn.Module`` to train (GlmForCausalLM, a PEFT model, or a
    :class:`PrefixModel`); only the method's parameters require grad.
    """

    model: nn.Module
    method: str
    options: Any

    def save(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write only what the method trains, plus ``glmtune_method.json``; returns the files written."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = get_method(self.method).save(self.model, out)
        write_method_file(out, self.method, self.options)
        return [*files, out / METHOD_FILE]

    def load_state(self, folder: str | os.PathLike) -> None:
        """Resume: copy a saved result into this prepared model in place (optimizer state stays valid)."""
        get_method(self.method).load_state(self.model, Path(folder))

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]


def prepare(model: nn.Module, method_name: str, options: Any = None) -> Prepared:
    """Prepare ``model`` for training with a method of :data:`METHODS` (options: None, dict or dataclass)."""
    method_name = canonical_name(method_name)
    options = make_options(method_name, options)
    prepared = get_method(method_name).prepare(model, options)
    if not any(p.requires_grad for p in prepared.parameters()):
        raise MethodError(f"method {method_name!r} with {options} leaves no parameter to train")
    return Prepared(prepared, method_name, options)


def write_method_file(out: Path, method: str, options: Any) -> Path:
    data = {"method": method, "options": options_to_dict(options), "glmtune_version": __version__}
    path = out / METHOD_FILE
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_method_file(folder: Path) -> tuple[str, Any]:
    path = folder / METHOD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        name, values = data["method"], data.get("options") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise MethodError(f"{path}: expected {{\"method\": NAME, \"options\": {{...}}}} ({exc})") from None
    return name, make_options(name, values)


def detect_method(folder: Path) -> str:
    """The method of a result folder: from glmtune_method.json, else from the files it holds."""
    if (folder / METHOD_FILE).is_file():
        return read_method_file(folder)[0]
    if (folder / "adapter_config.json").is_file():
        return "lora"
    if (folder / PREFIX_FILE).is_file() or "pre_seq_len" in _json_keys(folder / "config.json"):
        return "ptuning"
    if (folder / WEIGHTS_FILE).is_file():
        return "freeze"
    raise MethodError(
        f"{folder}: not a fine-tuning result (expected {METHOD_FILE}, a LoRA adapter_config.json, "
        f"a P-Tuning {PREFIX_FILE} or config.json with pre_seq_len, or {WEIGHTS_FILE})"
    )


def _json_keys(path: Path) -> set[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def load_trained(base_model: nn.Module, out_dir: str | os.PathLike, *,
                 base_path_override: str | None = None) -> nn.Module:
    """``base_model`` with a saved result re-applied (eval mode, nothing trainable): for chat, eval, export.

    LoRA (glmtune, PEFT or official ChatGLM3) -> PEFT model, P-Tuning ->
    :class:`PrefixModel`, freeze/full -> the base model with the saved tensors
    copied in. ``base_path_override`` is recorded in a LoRA model's PEFT config.
    """
    folder = Path(out_dir)
    if not folder.is_dir():
        raise MethodError(f"{folder}: fine-tuning result folder not found")
    return get_method(detect_method(folder)).load(base_model, folder, base_path_override=base_path_override)


def trainable_parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        # A ZeRO-3 partition: the whole tensor's size; a bitsandbytes 4-bit weight: its unpacked size.
        count = getattr(param, "ds_numel", None) or _quantized_numel(param) or param.numel()
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total


def _quantized_numel(param) -> int | None:
    state = getattr(param, "quant_state", None)  # bitsandbytes Params4bit stores two 4-bit values per byte
    shape = getattr(state, "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else None


def format_parameter_counts(model: nn.Module) -> str:
    """One line for the start-of-training print."""
    trainable, total = trainable_parameter_counts(model)
    share = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {share:.4f}"


__all__ = ["METHODS", "METHOD_FILE", "Method", "Prepared", "detect_method", "format_parameter_counts",
           "get_method", "load_trained", "make_options", "prepare", "read_method_file", "trainable_parameter_counts",
           "write_method_file"]
