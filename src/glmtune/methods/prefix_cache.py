"""The KV cache that carries the P-Tuning v2 prefix into transformers' GLM layers.

A :class:`PrefixCache` holds, per layer, the prefix keys/values (batch,
groups, P, head_dim). GLM's attention rotates the new keys and then calls
``cache.update(k, v, layer)``, so the prefix is never rotated — exactly the
official semantics.

* ``grow=False`` (training, or any forward without ``use_cache``): ``update``
  returns ``cat(prefix, new)`` and stores nothing. The cache is therefore
  read-only, so gradient checkpointing may re-run a layer's forward during
  backward and get the very same keys (this is what transformers'
  ``GradientCheckpointingLayer._can_checkpoint_with_cache`` is for).
* ``grow=True`` (inference with ``use_cache``): it behaves like a
  ``DynamicCache`` that starts out holding the prefix.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class PrefixLayer(DynamicLayer):
    """One layer's prefix (and, when growing, the generated keys after it)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, *, grow: bool, prefix_length: int):
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.keys, self.values = keys, values
        self.is_initialized = True
        self.grow = grow
        self.prefix_length = prefix_length

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys = torch.cat([self.keys, key_states.to(self.keys.dtype)], dim=-2)
        values = torch.cat([self.values, value_states.to(self.values.dtype)], dim=-2)
        if self.grow:
            self.keys, self.values = keys, values
        return keys, values

    def get_seq_length(self) -> int:
        """Real tokens held, the prefix not counted: what ``generate`` and position ids count from."""
        return self.keys.shape[-2] - self.prefix_length


class PrefixCache(Cache):
    """Per-layer P-Tuning v2 prefixes as a transformers ``Cache`` (see the module docstring)."""

    def __init__(self, prefix: list[tuple[torch.Tensor, torch.Tensor]], *, grow: bool):
        length = prefix[0][0].shape[-2]
        super().__init__(layers=[PrefixLayer(k, v, grow=grow, prefix_length=length) for k, v in prefix])
        self.prefix_length = length
        self.grow = grow

    def real_length(self) -> int:
        """Tokens seen so far after the prefix (0 before the first forward); same as ``get_seq_length()``."""
        return self.get_seq_length()
