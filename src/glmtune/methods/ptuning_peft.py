"""GLM-4's official P-Tuning v2 checkpoints (PEFT prefix tuning) loaded as glmtune prefixes.

THUDM's GLM-4 fine-tune demo (``configs/ptuning_v2.yaml``: ``peft_type: PREFIX_TUNING``,
``num_virtual_tokens: 512``, ``num_attention_heads: 2``, ``token_dim: 256``) saves what PEFT saves::

    adapter_config.json          {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": P, "num_layers": L,
                                  "num_attention_heads": G, "token_dim": G * head_dim, ...}
    adapter_model.safetensors    prompt_embeddings  (P, L * 2 * token_dim)

PEFT views each row as (layers * 2, G, head_dim): row ``2l`` is layer ``l``'s key, ``2l + 1`` its value,
which is exactly the official ChatGLM3 prefix encoder's layout when ``G`` is the model's key/value
groups (2 for GLM-4-9B) and ``token_dim`` their width. With the official GLM-4 code, PEFT passes the
prefix as the past keys/values and drops ``position_ids``, so the prefix is never rotated and the model
numbers the real tokens 0..n-1: the semantics of :class:`~glmtune.methods.ptuning.PrefixModel`. The
saved rows are the prefix itself (a ``prefix_projection`` MLP is already applied), so they load as
the embedding of a prefix without projection.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..models import find_glm
from ..models.checkpoint import iter_tensors
from ..models.convert import CheckpointError
from .errors import MethodError
from .options import PrefixOptions
from .ptuning import PrefixModel
from .ptuning_io import check_prefix_shape, load_prefix_weights

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_KEY = "prompt_embeddings"


def is_peft_prefix(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a PEFT prefix-tuning checkpoint (its adapter_config.json says PREFIX_TUNING)."""
    config = Path(folder) / PEFT_CONFIG
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("peft_type") == "PREFIX_TUNING"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def read_peft_config(folder: Path) -> dict:
    path = folder / PEFT_CONFIG
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MethodError(f"{path}: cannot read the PEFT adapter config ({type(exc).__name__}: {exc})") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "PREFIX_TUNING":
        raise MethodError(f"{path}: peft_type is {cfg.get('peft_type') if isinstance(cfg, dict) else cfg!r}, "
                          "expected PREFIX_TUNING (GLM-4's official P-Tuning v2)")
    for key in ("num_virtual_tokens", "num_layers", "num_attention_heads", "token_dim"):
        if not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise MethodError(f"{path}: '{key}' is {cfg.get(key)!r}, expected a positive integer as PEFT writes it")
    if cfg.get("num_transformer_submodules", 1) != 1:
        raise MethodError(f"{path}: num_transformer_submodules {cfg['num_transformer_submodules']} (an "
                          "encoder-decoder prefix); a GLM prefix has 1")
    return cfg


def read_peft_embeddings(folder: Path) -> tuple[torch.Tensor, Path]:
    """The ``prompt_embeddings`` tensor and the file it came from (safetensors, or a .bin read weights_only)."""
    for name in PEFT_WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        try:
            tensors = dict(iter_tensors(path))
        except CheckpointError as exc:
            raise MethodError(str(exc)) from None
        if PEFT_KEY not in tensors:
            raise MethodError(f"{path}: no '{PEFT_KEY}' tensor (has {', '.join(sorted(tensors)[:5]) or 'none'}); "
                              "not a PEFT prefix-tuning checkpoint")
        return tensors[PEFT_KEY], path
    raise MethodError(f"{folder}: no {' or '.join(PEFT_WEIGHTS)} beside {PEFT_CONFIG}")


def check_peft_shape(cfg: dict, config, source: Path) -> None:
    """The PEFT prefix must have been trained for this model's layers, key/value groups and head size."""
    want = {"num_layers": config.num_hidden_layers, "num_attention_heads": config.num_key_value_heads,
            "token_dim": config.num_key_value_heads * config.head_dim}
    wrong = [f"{k} {cfg[k]} (this model: {v})" for k, v in want.items() if cfg[k] != v]
    if wrong:
        raise MethodError(f"{source}: the prefix was trained for another model shape: {', '.join(wrong)}; "
                          "num_attention_heads must be the key/value groups (multi_query_group_num) and token_dim "
                          "their width, as GLM-4's ptuning_v2.yaml sets them (2 and 256 for GLM-4-9B)")


def apply_peft_prefix(model: nn.Module, prefix_dir: str | os.PathLike) -> PrefixModel:
    """``model`` wrapped with the PEFT prefix saved in ``prefix_dir`` (eval mode, nothing trainable)."""
    folder = Path(prefix_dir)
    cfg = read_peft_config(folder)
    weight, source = read_peft_embeddings(folder)
    config = find_glm(model).config
    check_peft_shape(cfg, config, folder / PEFT_CONFIG)
    # PEFT's prefix has no dropout; the saved rows are final (no projection to rebuild).
    options = PrefixOptions(num_virtual_tokens=cfg["num_virtual_tokens"], prefix_projection=False, prefix_dropout=0.0)
    state = {"embedding.weight": weight.float()}
    check_prefix_shape(state, options, config, source)
    wrapped = PrefixModel(model, options)
    load_prefix_weights(wrapped, state, source)
    wrapped.requires_grad_(False)
    wrapped.eval()
    return wrapped
