"""Full fine-tuning: every parameter trains; the result is a whole model folder.

Saved folder: ``glmtune.models.save_model`` native layout (config.json +
sharded safetensors), loadable on its own with ``glmtune.load_model(DIR)``.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..models import save_model
from ..models.checkpoint import weight_files
from ..models.convert import CheckpointError
from .errors import MethodError
from .freeze import load_tensors_into
from .options import FullOptions


def prepare_full(model: nn.Module, options: FullOptions) -> nn.Module:
    model.requires_grad_(True)
    return model


def save_full(model: nn.Module, out_dir: str | os.PathLike) -> list[Path]:
    out = Path(out_dir)
    save_model(model, out)
    return sorted(p for p in out.iterdir() if p.suffix in (".safetensors", ".json") and p.name != "glmtune_method.json")


def load_full_state(model: nn.Module, folder: str | os.PathLike) -> None:
    try:
        files = weight_files(Path(folder))
    except CheckpointError as exc:
        raise MethodError(str(exc)) from None
    expected = {n for n, _ in model.named_parameters()}
    loaded = set()
    for path in files:
        loaded.update(load_tensors_into(model, path))
    missing = expected - loaded
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if missing - tied:
        raise MethodError(f"{folder}: saved model lacks {len(missing - tied)} tensors, e.g. {sorted(missing - tied)[0]}")
