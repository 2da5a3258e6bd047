"""Batches for the Trainer: right-padded, or padding-free packed rows.

Packed rows carry ``position_ids`` that restart at 0 for each sample and NO
``attention_mask``: transformers' ``masking_utils.find_packed_sequence_indices``
then builds a block-diagonal causal mask from the position ids, so no token
attends across samples. That detection is skipped when a KV cache exists,
which ``GlmModel`` creates whenever ``use_cache`` is true (the config
default), so packed batches also carry ``use_cache=False``.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np
import torch

from .chat_format import IGNORE_INDEX


class PaddedCollator:
    """Right-pad ``input_ids`` (``pad_id``) and ``labels`` (``label_pad``); add attention mask and positions."""

    def __init__(self, pad_id: int = 0, label_pad: int = IGNORE_INDEX, pad_to_multiple_of: int | None = None):
        self.pad_id, self.label_pad, self.multiple = pad_id, label_pad, pad_to_multiple_of

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        ids, labels, mask, pos = [], [], [], []
        for f in features:
            n, pad = len(f["input_ids"]), width - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_id] * pad)
            labels.append(list(f["labels"]) + [self.label_pad] * pad)
            mask.append([1] * n + [0] * pad)
            pos.append(list(range(n)) + [0] * pad)
        return {"input_ids": torch.tensor(ids, dtype=torch.long),
                "attention_mask": torch.tensor(mask, dtype=torch.long),
                "labels": torch.tensor(labels, dtype=torch.long),
                "position_ids": torch.tensor(pos, dtype=torch.long)}


def _sample_parts(feature: dict) -> tuple[list[int], list[int], list[int]]:
    ids, labels = list(feature["input_ids"]), list(feature["labels"])
    if "position_ids" in feature:  # already a packed row
        return ids, labels, list(feature["position_ids"])
    if labels:
        labels[0] = IGNORE_INDEX  # never predict a sample's first token from the previous sample
    return ids, labels, list(range(len(ids)))


class PackedCollator:
    """Padding-free batches (like transformers' ``DataCollatorWithFlattening``).

    Packed rows (features with ``position_ids``, from :class:`PackedDataset`)
    are stacked as a batch: attention cost stays that of one row length, not
    of the whole batch as one row. Rows shorter than the longest get a tail
    of ``pad_id`` tokens numbered as a sample of their own (positions from
    0, labels -100), so the tail attends only to itself. Plain samples are
    concatenated into one row.
    """

    def __init__(self, pad_id: int = 0):
        self.pad_id = pad_id

    def __call__(self, features: Sequence[dict]) -> dict:
        rows = [_sample_parts(f) for f in features] if all("position_ids" in f for f in features) else None
        if rows is None:
            ids, labels, pos = [], [], []
            for f in features:
                a, b, c = _sample_parts(f)
                ids += a
                labels += b
                pos += c
            rows = [(ids, labels, pos)]
        width = max(len(r[0]) for r in rows)
        batch = {"input_ids": [], "labels": [], "position_ids": []}
        for ids, labels, pos in rows:
            pad = width - len(ids)
            batch["input_ids"].append(ids + [self.pad_id] * pad)
            batch["labels"].append(labels + [IGNORE_INDEX] * pad)
            batch["position_ids"].append(pos + list(range(pad)))
        out: dict = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        out["use_cache"] = False
        return out


def pack(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Group sample indices into rows of at most ``max_length`` tokens (best-fit decreasing).

    A sample longer than ``max_length`` gets a row of its own. Rows keep
    their samples in dataset order.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, row index), sorted
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, row = free.pop(k)
            rows[row].append(i)
            bisect.insort(free, (room - n, row))
        else:
            rows.append([i])
            if max_length - n > 0:
                bisect.insort(free, (max_length - n, len(rows) - 1))
    return [sorted(r) for r in rows]


class PackedDataset:
    """Rows of several samples each (``pack``), as ``input_ids``/``labels``/``position_ids``."""

    def __init__(self, dataset, max_length: int):
        lengths = dataset.lengths() if hasattr(dataset, "lengths") else [len(s["input_ids"]) for s in dataset]
        self.dataset, self.max_length = dataset, max_length
        self.rows = pack([int(n) for n in lengths], max_length)
        labelled = dataset.labelled() if hasattr(dataset, "labelled") else [
            sum(label != IGNORE_INDEX for label in _sample_parts(s)[1]) for s in dataset]
        self.tokens = np.array([sum(int(lengths[j]) for j in row) for row in self.rows], dtype=np.int64)
        """Tokens per row."""
        self.labelled = np.array([sum(int(labelled[j]) for j in row) for row in self.rows], dtype=np.int64)
        """Labelled tokens per row (what the output layer works on)."""

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids, labels, pos = [], [], []
        for j in self.rows[i]:
            a, b, c = _sample_parts(self.dataset[j])
            ids += a
            labels += b
            pos += c
        return {"input_ids": ids, "labels": labels, "position_ids": pos}


def make_collator(cfg, pad_id: int = 0):
    """The collator for ``cfg`` (a :class:`DataConfig`): packed when ``cfg.packs``, else padded."""
    return PackedCollator(pad_id=pad_id) if cfg.packs else PaddedCollator(pad_id=pad_id)


def training_dataset(dataset, cfg):
    """``dataset`` as the Trainer should see it: packed into rows of ``cfg.row_length`` when ``cfg.packs``."""
    return PackedDataset(dataset, cfg.row_length) if cfg.packs else dataset

