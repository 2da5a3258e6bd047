"""Row surgery on a KV cache, for continuous batching: drop finished rows, left-pad, join two batches.

Every cache layer holds keys/values of shape (batch, groups, [prefix +] tokens, head_dim).
A P-Tuning v2 layer (:class:`~glmtune.methods.prefix_cache.PrefixLayer`) keeps its
``prefix_length`` prefix slots first; padding always goes after the prefix, so the
attention mask (over real tokens only) stays aligned with the cached tokens.
Only layer kinds whose whole state is ``keys``/``values`` are handled
(:func:`can_join`); for any other cache the batcher never joins batches, it only drops rows.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from ..methods.prefix_cache import PrefixLayer


def _layers(cache) -> list:
    return [] if cache is None else list(getattr(cache, "layers", []))


def can_join(cache) -> bool:
    """Whether rows can be added to ``cache`` (None: a model without a cache, e.g. a test stand-in)."""
    if cache is None:
        return True
    layers = _layers(cache)
    return bool(layers) and all(type(layer) in (DynamicLayer, PrefixLayer) and layer.is_initialized
                                for layer in layers)


def select_rows(cache, index: torch.Tensor) -> None:
    """Keep only the rows ``index`` (in place)."""
    for layer in _layers(cache):
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys, layer.values = layer.keys[index], layer.values[index]


def _prefix(layer) -> int:
    return getattr(layer, "prefix_length", 0)


def drop_left(cache, n: int) -> None:
    """Remove the ``n`` oldest token slots (after any prefix), e.g. columns that are padding in every row."""
    if n <= 0:
        return
    for layer in _layers(cache):
        p = _prefix(layer)
        layer.keys = torch.cat([layer.keys[..., :p, :], layer.keys[..., p + n:, :]], dim=-2)
        layer.values = torch.cat([layer.values[..., :p, :], layer.values[..., p + n:, :]], dim=-2)


def _pad_after_prefix(tensor: torch.Tensor, p: int, n: int) -> torch.Tensor:
    if n <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[-2] = n
    return torch.cat([tensor[..., :p, :], tensor.new_zeros(shape), tensor[..., p:, :]], dim=-2)


def join(cache, mask: torch.Tensor, other, other_mask: torch.Tensor) -> tuple[object, torch.Tensor]:
    """Rows of ``other`` appended to ``cache`` (in place), both left-padded to one length; the joined mask.

    ``mask``/``other_mask`` are the (batch, tokens) attention masks of the cached tokens.
    """
    width = max(mask.shape[1], other_mask.shape[1])
    pad_a, pad_b = width - mask.shape[1], width - other_mask.shape[1]
    for a, b in zip(_layers(cache), _layers(other)):
        p = _prefix(a)
        a.keys = torch.cat([_pad_after_prefix(a.keys, p, pad_a), _pad_after_prefix(b.keys, p, pad_b)], dim=0)
        a.values = torch.cat([_pad_after_prefix(a.values, p, pad_a), _pad_after_prefix(b.values, p, pad_b)], dim=0)
    joined = torch.cat([torch.nn.functional.pad(mask, (pad_a, 0)), torch.nn.functional.pad(other_mask, (pad_b, 0))])
    return cache, joined
