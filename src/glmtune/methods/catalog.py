"""The one registry of fine-tuning methods: every fact about a method, in one table (:data:`METHODS`).

A :class:`Method` holds its options type, config section, aliases and help, and where its operations
live (prepare, save, resume in place, load a saved result onto a base model). The config layer and
``glmtune train --help-config`` read this table without importing torch: the operations are named
``"module:function"`` in :mod:`glmtune.methods` and imported on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from ..errors import closest
from .errors import MethodError
from .options import FreezeOptions, FullOptions, LoraOptions, PrefixOptions


def _function(ref: str) -> Callable:
    # Deferred import: the method modules import torch, transformers and PEFT.
    module, name = ref.split(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)


@dataclass(frozen=True)
class Method:
    """One fine-tuning method. Operations (``"module:function"`` in glmtune.methods):

    * ``prepare_ref``: ``(model, options) -> model`` to train (only the method's parameters require grad);
    * ``save_ref``: ``(model, out_dir) -> [files]``, what the method trains (final result and checkpoints);
    * ``load_state_ref``: ``(prepared model, folder) -> None``, resume in place (optimizer state stays valid);
    * ``load_ref``: ``(base model, folder, base_path_override=None) -> model``, a saved result applied
      for chat/eval/export; None: ``load_state`` copies it into the base model in place.
    """

    name: str
    options_type: type
    help: str
    prepare_ref: str
    save_ref: str
    load_state_ref: str
    load_ref: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def section(self) -> str:
        """The config section holding the options (``method.<section>``)."""
        return self.name

    def prepare(self, model, options):
        return _function(self.prepare_ref)(model, options)

    def save(self, model, out_dir):
        return _function(self.save_ref)(model, out_dir)

    def load_state(self, model, folder) -> None:
        _function(self.load_state_ref)(model, folder)

    def load(self, model, folder, *, base_path_override: str | None = None):
        """``model`` with the result in ``folder`` applied, in eval mode with nothing trainable."""
        if self.load_ref is not None:
            return _function(self.load_ref)(model, folder, base_path_override=base_path_override)
        self.load_state(model, folder)
        model.requires_grad_(False)
        model.eval()
        return model


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("lora", LoraOptions, "LoRA options (rank, alpha, dropout, targets, rsLoRA, DoRA).",
           "lora:prepare_lora", "lora:save_lora", "adapters:load_lora_state", "adapters:apply_adapter"),
    Method("ptuning", PrefixOptions, "P-Tuning v2 options (num_virtual_tokens / pre_seq_len, prefix_projection).",
           "ptuning_io:prepare_ptuning", "ptuning_io:save_prefix", "ptuning_io:load_prefix_state",
           "ptuning_io:apply_prefix", aliases=("p-tuning", "ptuning_v2", "prefix")),
    Method("freeze", FreezeOptions, "Freeze options (train the last N layers, or modules matched by name).",
           "freeze:prepare_freeze", "freeze:save_trained_tensors", "freeze:load_freeze_state"),
    Method("full", FullOptions, "Full fine-tuning options.",
           "full:prepare_full", "full:save_full", "full:load_full_state", aliases=("sft",)),
)}

ALIASES: dict[str, str] = {alias: m.name for m in METHODS.values() for alias in m.aliases}


def canonical_name(name: str) -> str:
    """The method name an alias (``p-tuning``, ``sft``...) stands for; other names unchanged."""
    return ALIASES.get(name, name)


def get_method(name: str) -> Method:
    """The method ``name`` (or an alias of it); unknown names list the known ones."""
    try:
        return METHODS[canonical_name(name)]
    except (KeyError, TypeError):
        raise MethodError(f"unknown fine-tuning method {name!r}; {closest(name, list(METHODS))}"
                          f"known methods: {', '.join(METHODS)}") from None


__all__ = ["ALIASES", "METHODS", "Method", "canonical_name", "get_method"]
