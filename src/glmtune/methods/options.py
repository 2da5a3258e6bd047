"""Typed options of each fine-tuning method (one dataclass per method).

Defaults follow the official ChatGLM3 fine-tune demo where it has one
(LoRA r 8 / alpha 32 / dropout 0.1 on ``query_key_value``; P-Tuning v2
``pre_seq_len`` 128 without projection).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import closest
from .errors import MethodError

# Named LoRA target sets on the native GLM module names.
LORA_TARGETS: dict[str, list[str]] = {
    # The official demo's fused `query_key_value` is q/k/v here (same weights, split by rows).
    "qkv": ["q_proj", "k_proj", "v_proj"],
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    # Every linear layer of the decoder; the output layer stays frozen like PEFT's "all-linear".
    "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"],
}

# Official ChatGLM3 module names, accepted in a target list so official configs keep working.
OFFICIAL_MODULE_NAMES: dict[str, list[str]] = {
    "query_key_value": ["q_proj", "k_proj", "v_proj"],
    "dense": ["o_proj"],
    "dense_h_to_4h": ["gate_up_proj"],
    "dense_4h_to_h": ["down_proj"],
}


def _check(condition: bool, option: str, message: str) -> None:
    if not condition:
        raise MethodError(f"method option {option}: {message}")


@dataclass
class LoraOptions:
    """LoRA through PEFT on the native GLM linear layers."""

    r: int = 8
    """Rank of the low-rank update (official demo: 8)."""
    alpha: float = 32.0
    """Scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) with rsLoRA)."""
    dropout: float = 0.1
    """Dropout on the LoRA input during training."""
    target: str | list[str] = "qkv"
    """Which layers get adapters: "qkv" (the official query_key_value), "attention" (q/k/v/o),
    "all-linear", or a list of module names (native like "q_proj" or official like "query_key_value")."""
    use_rslora: bool = False
    """Rank-stabilised LoRA: scale by alpha / sqrt(r), better for large ranks."""
    use_dora: bool = False
    """DoRA: learn a per-output magnitude on top of the LoRA direction update."""

    def __post_init__(self) -> None:
        _check(isinstance(self.r, int) and self.r > 0, "lora.r", f"must be a positive integer, got {self.r!r}")
        _check(isinstance(self.alpha, (int, float)) and self.alpha > 0, "lora.alpha",
               f"must be a positive number, got {self.alpha!r}")
        _check(isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "lora.dropout",
               f"must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.target, str):
            _check(self.target in LORA_TARGETS, "lora.target",
                   f"unknown target {self.target!r}; use one of {', '.join(LORA_TARGETS)} or a list of module names")
        else:
            _check(isinstance(self.target, (list, tuple)) and len(self.target) > 0
                   and all(isinstance(t, str) and t for t in self.target), "lora.target",
                   f"must be a name ({', '.join(LORA_TARGETS)}) or a non-empty list of module names, got {self.target!r}")
            self.target = list(self.target)

    def target_modules(self) -> list[str]:
        """Native module names to adapt (official names translated)."""
        names = LORA_TARGETS[self.target] if isinstance(self.target, str) else self.target
        out: list[str] = []
        for name in names:
            for native in OFFICIAL_MODULE_NAMES.get(name, [name]):
                if native not in out:
                    out.append(native)
        return out


@dataclass
class PrefixOptions:
    """P-Tuning v2 with the official ChatGLM3 semantics (trainable per-layer key/value prefixes)."""

    num_virtual_tokens: int = 128
    """Number of prefix slots per layer; the official `pre_seq_len`."""
    prefix_projection: bool = False
    """Reparameterise the prefix with the official two-layer MLP (Embedding -> Linear -> Tanh -> Linear)."""
    prefix_hidden_size: int | None = None
    """Hidden width of that MLP; None means the model's hidden size, as in the official code."""
    prefix_dropout: float = 0.1
    """Dropout on the prefix keys/values in training; official ``modeling_chatglm.py`` applies Dropout(0.1)."""

    def __post_init__(self) -> None:
        _check(isinstance(self.num_virtual_tokens, int) and self.num_virtual_tokens > 0,
               "ptuning.num_virtual_tokens", f"must be a positive integer, got {self.num_virtual_tokens!r}")
        _check(isinstance(self.prefix_projection, bool), "ptuning.prefix_projection",
               f"must be true or false, got {self.prefix_projection!r}")
        _check(self.prefix_hidden_size is None or (isinstance(self.prefix_hidden_size, int)
                                                   and self.prefix_hidden_size > 0),
               "ptuning.prefix_hidden_size", f"must be a positive integer or null, got {self.prefix_hidden_size!r}")
        _check(self.prefix_hidden_size is None or self.prefix_projection, "ptuning.prefix_hidden_size",
               "applies only with prefix_projection: true")
        _check(isinstance(self.prefix_dropout, (int, float)) and 0 <= self.prefix_dropout < 1,
               "ptuning.prefix_dropout", f"must be in [0, 1), got {self.prefix_dropout!r}")


@dataclass
class FreezeOptions:
    """Train only some layers of the model, everything else frozen."""

    trainable_layers: int | None = None
    """Train the last N decoder layers (a negative N: the first |N|). Default 2 when no modules are given."""
    trainable_modules: list[str] | None = None
    """Train parameters whose name matches one of these glob patterns, e.g. "model.layers.*.mlp.*" or
    "lm_head"; a pattern also matches everything below a module of that name."""

    def __post_init__(self) -> None:
        if self.trainable_layers is None and not self.trainable_modules:
            self.trainable_layers = 2
        _check(self.trainable_layers is None or (isinstance(self.trainable_layers, int)
                                                 and not isinstance(self.trainable_layers, bool)
                                                 and self.trainable_layers != 0),
               "freeze.trainable_layers", f"must be a non-zero integer, got {self.trainable_layers!r}")
        if self.trainable_modules is not None:
            if isinstance(self.trainable_modules, str):
                self.trainable_modules = [self.trainable_modules]
            _check(all(isinstance(p, str) and p for p in self.trainable_modules), "freeze.trainable_modules",
                   f"must be a list of name patterns, got {self.trainable_modules!r}")
            self.trainable_modules = list(self.trainable_modules)


@dataclass
class FullOptions:
    """Full fine-tuning: every parameter trains. No options; the dataclass keeps the API uniform."""


def options_from_dict(options_type: type, values: dict[str, Any], method: str) -> Any:
    """Build ``options_type`` from a plain dict; unknown keys are an error listing the valid ones."""
    known = [f.name for f in dataclasses.fields(options_type)]
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = []
        for key in unknown:  # the one closest-name hint (glmtune.errors.closest), as the config checker gives
            hint = closest(key, known).strip()
            hints.append(f"{key!r}" + (f" ({hint})" if hint else ""))
        raise MethodError(
            f"unknown option(s) for method {method!r}: {', '.join(hints)}; "
            f"valid options: {', '.join(known) if known else '(none)'}"
        )
    return options_type(**values)


def options_to_dict(options: Any) -> dict[str, Any]:
    return dataclasses.asdict(options)


__all__ = ["FreezeOptions", "FullOptions", "LoraOptions", "PrefixOptions", "LORA_TARGETS",
           "OFFICIAL_MODULE_NAMES", "options_from_dict", "options_to_dict"]
