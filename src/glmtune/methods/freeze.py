"""Freeze tuning: only chosen decoder layers (or name-matched modules) train.

Saved folder: ``trained_weights.safetensors`` with just the trainable tensors
under their native names (small), applied onto the same base model by
:func:`glmtune.methods.load_trained`.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..models import find_glm
from ..models.checkpoint import iter_tensors
from ..models.convert import CheckpointError
from .errors import MethodError
from .options import FreezeOptions

WEIGHTS_FILE = "trained_weights.safetensors"


def matches(name: str, pattern: str) -> bool:
    """Glob match on a parameter name, or on any module above it."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def trainable_names(model: nn.Module, options: FreezeOptions) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    chosen: set[str] = set()
    if options.trainable_layers is not None:
        count = find_glm(model).config.num_hidden_layers
        n = options.trainable_layers
        if abs(n) > count:
            raise MethodError(f"method option freeze.trainable_layers: {n} but the model has only {count} layers")
        layers = range(count - n, count) if n > 0 else range(0, -n)
        prefixes = tuple(f"model.layers.{i}." for i in layers)
        chosen.update(name for name in names if name.startswith(prefixes))
    for pattern in options.trainable_modules or []:
        hit = [name for name in names if matches(name, pattern)]
        if not hit:
            example = ", ".join(names[:3])
            raise MethodError(f"method option freeze.trainable_modules: pattern {pattern!r} matches no parameter "
                              f"(names look like {example}, ...)")
        chosen.update(hit)
    return [name for name in names if name in chosen]


def prepare_freeze(model: nn.Module, options: FreezeOptions) -> nn.Module:
    chosen = set(trainable_names(model, options))
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
    return model


def save_trained_tensors(model: nn.Module, out_dir: str | os.PathLike) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    return [out / WEIGHTS_FILE]


def load_tensors_into(model: nn.Module, path: Path) -> list[str]:
    """Copy tensors from ``path`` into ``model``'s parameters of the same name, in place."""
    params = dict(model.named_parameters())
    loaded = []
    try:
        pairs = list(iter_tensors(path))
    except CheckpointError as exc:
        raise MethodError(str(exc)) from None
    with torch.no_grad():
        for name, tensor in pairs:
            if name not in params:
                raise MethodError(f"{path}: tensor {name!r} is not a parameter of this model")
            if params[name].shape != tensor.shape:
                raise MethodError(f"{path}: {name} has shape {tuple(tensor.shape)}, the model's is "
                                  f"{tuple(params[name].shape)}; saved from a different base model shape")
            params[name].copy_(tensor)
            loaded.append(name)
    return loaded


def load_freeze_state(model: nn.Module, folder: str | os.PathLike) -> None:
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise MethodError(f"{path}: file not found (a freeze-tuning result holds {WEIGHTS_FILE})")
    load_tensors_into(model, path)
