"""Attention for packed rows without a dense mask: causal SDPA on each sample of a row.

Packed rows carry ``position_ids`` that restart at 0 for each sample and no
``attention_mask``. Under transformers' ``sdpa`` that becomes a dense
(batch, 1, L, L) block-diagonal mask, and SDPA given any mask computes every
block of the L x L scores (the CPU flash kernel and the GPU memory-efficient one
skip nothing masked): a 769-token row of five samples costs ~5x the attention
of its samples alone, and the mask must be built and read in every layer.

``glmtune_sdpa`` (registered through transformers' public ``AttentionInterface``
and ``AttentionMaskInterface``) builds no mask when a batch has none and runs
``is_causal`` SDPA on each sample's span of the row (the kernels skip the
upper triangle), so no token attends across samples by construction. Every
other case (a padding mask, a KV cache, one sample per row) is transformers'
``sdpa`` unchanged, so the implementation can stay on for evaluation and
generation too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "glmtune_sdpa"


def segment_bounds(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """(start, end) of each sample in each row: a sample starts where positions do not go up by 1.

    The same rule as transformers' ``masking_utils.find_packed_sequence_indices``.
    """
    step = torch.diff(position_ids, dim=-1) != 1
    rows = []
    for b, starts in enumerate(step.tolist()):
        cuts = [0] + [i + 1 for i, s in enumerate(starts) if s] + [position_ids.shape[-1]]
        rows.append(list(zip(cuts[:-1], cuts[1:])))
    return rows


# (position_ids, its bounds) of the last forward: every layer of a forward gets the same tensor. Replaced whole
# (one assignment), so threads (nn.DataParallel replicas) never read another's half-written entry.
_LAST: dict[str, tuple] = {"bounds": (None, -1, None)}


def _bounds(position_ids: torch.Tensor, batch: int) -> list[list[tuple[int, int]]]:
    """``segment_bounds``, once per forward: on a GPU each computation is a device-to-host copy."""
    cached = _LAST["bounds"]
    if cached[0] is not position_ids or cached[1] != position_ids._version:  # _version: changed in place
        cached = (position_ids, position_ids._version, segment_bounds(position_ids.expand(batch, -1)))
        _LAST["bounds"] = cached
    return cached[2]


def _packed(query: torch.Tensor, key: torch.Tensor, attention_mask, position_ids) -> bool:
    return (attention_mask is None and position_ids is not None and query.shape[2] == key.shape[2] > 1
            and position_ids.shape[-1] == query.shape[2])


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        position_ids=None, **kwargs):
    """``sdpa_attention_forward``, but per sample (``is_causal``) on packed rows that carry no mask."""
    if not _packed(query, key, attention_mask, position_ids):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      position_ids=position_ids, **kwargs)
    batch, heads, length, _ = query.shape
    bounds = _bounds(position_ids, batch)
    if all(len(b) == 1 for b in bounds):
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling, **kwargs)
    lengths = [end - start for row in bounds for start, end in row]
    # Tokens of all rows in one sequence, split into samples: one split (and one cat in backward) rather than
    # a slice per sample, whose backward would fill a whole-batch zero gradient for each.
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], t.shape[-1]).split(lengths)
               for t in (query, key, value))
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    outs = [F.scaled_dot_product_attention(qs.transpose(0, 1)[None], ks.transpose(0, 1)[None], vs.transpose(0, 1)[None],
                                           dropout_p=dropout, scale=scaling, is_causal=True,
                                           enable_gqa=gqa)[0].transpose(0, 1)
            for qs, ks, vs in zip(q, k, v)]
    return torch.cat(outs).view(batch, length, heads, value.shape[-1]), None


def packed_aware_mask(*args, attention_mask=None, q_length=None, kv_length=None, **kwargs):
    """No mask at all for a batch without one (packed rows, or plain causal); else ``sdpa``'s mask."""
    if attention_mask is None and q_length == kv_length:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, q_length=q_length, kv_length=kv_length, **kwargs)


def enable_packed_attention(model: torch.nn.Module) -> None:
    """Switch ``model`` (any wrapper around a transformers model) to ``glmtune_sdpa``; idempotent."""
    AttentionInterface.register(NAME, packed_sdpa_forward)
    AttentionMaskInterface.register(NAME, packed_aware_mask)
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_attn_implementation", None) in ("sdpa", NAME):
            config._attn_implementation = NAME
