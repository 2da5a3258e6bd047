"""The training order of packed rows: random, with about the same work in every step.

Packing makes every row about the same number of tokens, but not the same number of
*labelled* tokens, and the output layer (logits over the whole vocabulary, then their
gradient) runs only on labelled tokens: on a small model it is half of a step, so a step
of four rows took 1499-2446 labelled tokens and its time swung with them; across data-parallel
processes every step waits for the slowest one. :class:`BalancedSampler` keeps the order
random but deals each window of rows into steps of about equal work (the longest-processing-time
greedy rule: heaviest row first, each to the lightest step with room), as transformers'
``BatchRebalanceSampler`` balances padded batches and veRL's ``balance_batch`` balances
sequences across ranks.
"""

from __future__ import annotations

import heapq
from typing import Sequence

import numpy as np
import torch

WINDOW = 16
"""Optimizer steps dealt together: enough rows to balance, few enough that the order stays random."""


def deal(items: Sequence[int], work: np.ndarray, groups: int, size: int) -> list[list[int]]:
    """Split ``items`` (``groups * size`` row indices) into ``groups`` lists of ``size`` with balanced work.

    Heaviest first, each to the lightest group that still has room; ties keep ``items``' order, so a
    random ``items`` gives a random choice among equal rows.
    """
    order = sorted(items, key=lambda i: -work[i])
    heap = [(0.0, g) for g in range(groups)]
    out: list[list[int]] = [[] for _ in range(groups)]
    for i in order:
        total, g = heapq.heappop(heap)
        out[g].append(i)
        if len(out[g]) < size:
            heapq.heappush(heap, (total + float(work[i]), g))
    return out


class BalancedSampler(torch.utils.data.Sampler):
    """Row indices in a seeded random order, each optimizer step's rows of balanced work.

    An optimizer step takes ``batches`` batches of ``batch`` rows (gradient accumulation steps x
    processes; accelerate hands consecutive batches to the processes in turn). The order is a
    permutation drawn from ``seed + epoch`` (as accelerate's ``SeedableRandomSampler`` draws it),
    cut into windows of :data:`WINDOW` steps. Each window is dealt into steps of equal work, taken
    in a random order, and each step into its batches the same way. Which rows make a step depends
    only on its number of rows, so 2 processes x 2 rows, or 2 accumulated batches of 2, train on the
    same rows per step as 1 batch of 4. The rows after the epoch's last whole step come last, as
    drawn. Every row comes exactly once per epoch.
    """

    def __init__(self, work: Sequence[float], batch: int, batches: int = 1, seed: int = 0):
        if batch < 1 or batches < 1:
            raise ValueError(f"BalancedSampler: batch {batch} and batches {batches} must be >= 1")
        self.work = np.asarray(work, dtype=np.float64)
        self.batch, self.batches, self.seed, self.epoch = batch, batches, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.work)

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.work), generator=g).tolist()
        size = self.batch * self.batches
        out: list[int] = []
        for start in range(0, len(order), size * WINDOW):
            window = order[start:start + size * WINDOW]
            steps = len(window) // size
            dealt = deal(window[:steps * size], self.work, steps, size)
            for k in torch.randperm(steps, generator=g).tolist():
                for part in deal(dealt[k], self.work, self.batches, self.batch):
                    out += part
            out += window[steps * size:]
        return iter(out)


def row_work(tokens: np.ndarray, labelled: np.ndarray, labelled_weight: float) -> np.ndarray:
    """Estimated cost of each row: its tokens, plus each labelled token's extra output-layer work."""
    return np.asarray(tokens, dtype=np.float64) + labelled_weight * np.asarray(labelled, dtype=np.float64)


def labelled_weight(head_params: int, total_params: int) -> float:
    """Output-layer cost of a labelled token, in units of a token's cost through the rest of the model.

    An estimate for the common case, frozen weights with checkpointing (LoRA, P-Tuning, QLoRA): per token
    the decoder runs forward, again in the recompute, and backward for the input gradient (about 3 x its
    weights in multiply-adds); a labelled token also runs the output layer forward and backward (about 2 x
    its weights). The input embedding is a lookup, not counted. Other setups shift the ratio by up to 1.5x;
    it only steers which rows share a step, never what is computed.
    """
    body = max(total_params - 2 * head_params, 1)
    return 2 * head_params / (3 * body)
