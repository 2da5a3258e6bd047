"""Packed rows' training order: random, every row once, each step of about the same work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glmtune.data import PackedCollator, PackedDataset
from glmtune.data.dataset import EncodedDataset
from glmtune.data.sampler import BalancedSampler, deal, labelled_weight, row_work


def _work(n: int, seed: int = 0) -> np.ndarray:
    """Row costs like the benchmark's packed rows: ~770 tokens, 175-735 of them labelled."""
    rng = np.random.default_rng(seed)
    return row_work(rng.integers(700, 770, n), rng.integers(175, 735, n), 1.3)


def _steps(order: list[int], work: np.ndarray, size: int) -> np.ndarray:
    return np.array([work[order[i:i + size]].sum() for i in range(0, len(order) - size + 1, size)])


@pytest.mark.parametrize("n,batch,batches", [(460, 4, 1), (461, 2, 2), (7, 4, 1), (3, 4, 2), (0, 2, 1), (100, 1, 3)])
def test_every_row_exactly_once(n, batch, batches):
    order = list(BalancedSampler(_work(n), batch, batches, seed=3))
    assert sorted(order) == list(range(n))
    assert len(BalancedSampler(_work(n), batch, batches)) == n


def test_steps_carry_balanced_work_where_a_random_order_does_not():
    work = _work(460)
    sampler = BalancedSampler(work, 4, seed=0)
    balanced = _steps(list(sampler), work, 4)
    plain = _steps(np.random.default_rng(0).permutation(460).tolist(), work, 4)
    assert plain.max() / plain.min() > 1.3  # what the random order gives these rows
    assert balanced.max() / balanced.min() < 1.15  # the epoch's last, partial window included
    cv = lambda steps: steps.std() / steps.mean()  # noqa: E731
    assert cv(balanced) < cv(plain) / 3
    assert balanced.sum() == pytest.approx(work.sum())  # the same work, spread evenly


def test_order_is_random_seeded_and_changes_with_the_epoch():
    work = _work(200)
    a, b = BalancedSampler(work, 4, seed=1), BalancedSampler(work, 4, seed=1)
    assert list(a) == list(b)  # resume replays the same order
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert sorted(second) == sorted(first) and second != first
    steps = lambda order: {frozenset(order[i:i + 4]) for i in range(0, 200, 4)}  # noqa: E731
    assert len(steps(first) & steps(second)) < 5  # not the same steps every epoch
    assert list(BalancedSampler(work, 4, seed=2)) != first
    # Rows stay near where the random permutation put them: each comes within its window of 16 steps.
    positions = np.argsort(first)
    g = torch.Generator()
    g.manual_seed(1)
    drawn = torch.randperm(200, generator=g).tolist()
    assert all(positions[row] // 64 == i // 64 for i, row in enumerate(drawn))


def test_processes_and_accumulation_see_the_same_rows_per_step_as_one_batch():
    work = _work(301)
    one = list(BalancedSampler(work, 4, 1, seed=5))
    split = list(BalancedSampler(work, 2, 2, seed=5))  # 2 processes x 2 rows, or 2 accumulated batches of 2
    assert [set(one[i:i + 4]) for i in range(0, 301, 4)] == [set(split[i:i + 4]) for i in range(0, 301, 4)]
    halves = np.array([[work[split[i:i + 2]].sum(), work[split[i + 2:i + 4]].sum()] for i in range(0, 297, 4)])
    assert (halves.max(axis=1) / halves.min(axis=1)).max() < 1.25  # each process's half of a step is balanced too


def test_deal_puts_the_heaviest_rows_apart():
    groups = deal([0, 1, 2, 3, 4, 5], np.array([10.0, 9, 5, 4, 1, 1]), 2, 3)
    sums = sorted(sum([10.0, 9, 5, 4, 1, 1][i] for i in g) for g in groups)
    assert sorted(len(g) for g in groups) == [3, 3] and sums == [15.0, 15.0]


def test_labelled_counts_match_the_collated_rows():
    rng = np.random.default_rng(4)
    samples = []
    for _ in range(40):
        prompt, answer = int(rng.integers(1, 12)), int(rng.integers(0, 20))
        ids = rng.integers(3, 500, prompt + answer).tolist()
        labels = [-100] * prompt + ids[prompt:]
        if answer and rng.random() < 0.3:
            labels[0] = ids[0]  # a labelled first token (base-model text): never predicted in a packed row
        samples.append((ids, labels))
    encoded = EncodedDataset.from_samples(samples)
    for dataset in (encoded, list(encoded)):
        rows = PackedDataset(dataset, 32)
        for r in range(len(rows)):
            batch = PackedCollator()([rows[r]])
            assert rows.labelled[r] == int((batch["labels"] != -100).sum())
            assert rows.tokens[r] == batch["input_ids"].shape[1]


def test_labelled_weight_from_parameter_counts():
    # The benchmark model: 65024 x 512 output layer and embedding, 12.1M decoder parameters.
    head = 65024 * 512
    assert labelled_weight(head, 2 * head + 12_100_000) == pytest.approx(1.834, abs=1e-3)
    # ChatGLM3-6B: the output layer is a small part of a labelled token's cost.
    assert labelled_weight(65024 * 4096, 6_243_584_000) < 0.05
