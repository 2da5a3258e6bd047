"""The method registry, ``prepare``, ``Prepared.save`` and ``load_trained``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..version import __version__
from .errors import MethodError
from .freeze import WEIGHTS_FILE, load_freeze_state, prepare_freeze, save_trained_tensors
from .full import load_full_state, prepare_full, save_full
from .adapters import load_lora_state
from .lora import prepare_lora, save_lora
from .options import FreezeOptions, FullOptions, LoraOptions, PrefixOptions, options_from_dict, options_to_dict
from .ptuning import PrefixModel
from .ptuning_io import PREFIX_FILE, load_prefix_state, save_prefix

METHOD_FILE = "glmtune_method.json"


@dataclass(frozen=True)
class Method:
    """One fine-tuning method: how to prepare a model, save what it trains, and load that back in place."""

    options_type: type
    prepare: Callable[[nn.Module, Any], nn.Module]
    save: Callable[[nn.Module, Path], list[Path]]
    load_state: Callable[[nn.Module, Path], None]


def _prepare_ptuning(model: nn.Module, options: PrefixOptions) -> PrefixModel:
    model.requires_grad_(False)
    return PrefixModel(model, options)


METHODS: dict[str, Method] = {
    "lora": Method(LoraOptions, prepare_lora, save_lora, load_lora_state),
    "ptuning": Method(PrefixOptions, _prepare_ptuning, save_prefix, load_prefix_state),
    "freeze": Method(FreezeOptions, prepare_freeze, save_trained_tensors, load_freeze_state),
    "full": Method(FullOptions, prepare_full, save_full, load_full_state),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise MethodError(f"unknown fine-tuning method {name!r}; known methods: {', '.join(METHODS)}") from None


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
    from .adapters import apply_adapter
    from .ptuning_io import apply_prefix

    folder = Path(out_dir)
    if not folder.is_dir():
        raise MethodError(f"{folder}: fine-tuning result folder not found")
    method = detect_method(folder)
    if method == "lora":
        return apply_adapter(base_model, folder, base_path_override=base_path_override)
    if method == "ptuning":
        return apply_prefix(base_model, folder)
    get_method(method).load_state(base_model, folder)
    base_model.requires_grad_(False)
    base_model.eval()
    return base_model


def state_to_save(prepared: Prepared) -> dict[str, torch.Tensor]:
    """The trainable tensors by name (what a checkpoint must keep), detached on CPU."""
    return {n: p.detach().cpu() for n, p in prepared.trainable_parameters()}


def load_state(prepared: Prepared, folder: str | os.PathLike) -> None:
    """Resume: restore what ``Prepared.save(folder)`` wrote into ``prepared.model``, in place."""
    prepared.load_state(folder)


def trainable_parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def format_parameter_counts(model: nn.Module) -> str:
    """One line for the start-of-training print."""
    trainable, total = trainable_parameter_counts(model)
    share = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {share:.4f}"
