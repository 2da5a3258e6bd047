"""Encoded samples stored flat in numpy arrays: small in memory, instant to cache and reload."""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .chat_format import IGNORE_INDEX

FILES = ("input_ids.npy", "labels.npy", "offsets.npy")


class EncodedDataset:
    """A torch-Dataset-like sequence of ``{"input_ids": list[int], "labels": list[int]}``."""

    def __init__(self, input_ids: np.ndarray, labels: np.ndarray, offsets: np.ndarray):
        if len(input_ids) != len(labels) or offsets[-1] != len(input_ids):
            raise ValueError("EncodedDataset: input_ids, labels and offsets disagree")
        self.input_ids, self.labels, self.offsets = input_ids, labels, offsets

    @classmethod
    def from_samples(cls, samples: Iterable[tuple[Sequence[int], Sequence[int]]]) -> "EncodedDataset":
        # One flat fromiter at the end: the fastest way from many small lists to one int32 array.
        ids, labels, offsets = [], [], [0]
        for a, b in samples:
            ids.append(a)
            labels.append(b)
            offsets.append(offsets[-1] + len(a))
        total = offsets[-1]
        return cls(np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=total),
                   np.fromiter(chain.from_iterable(labels), dtype=np.int32, count=total),
                   np.asarray(offsets, dtype=np.int64))

    @classmethod
    def concat(cls, parts: Sequence["EncodedDataset"]) -> "EncodedDataset":
        if not parts:
            return cls.from_samples([])
        shifts = np.cumsum([0] + [len(p.input_ids) for p in parts[:-1]])
        offsets = np.concatenate([parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, shifts)])
        return cls(np.concatenate([p.input_ids for p in parts]), np.concatenate([p.labels for p in parts]),
                   offsets.astype(np.int64))

    def select(self, indices: Sequence[int]) -> "EncodedDataset":
        return EncodedDataset.from_samples((self.input_ids[self.offsets[i]:self.offsets[i + 1]],
                                            self.labels[self.offsets[i]:self.offsets[i + 1]]) for i in indices)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range (dataset has {len(self)})")
        a, b = self.offsets[i], self.offsets[i + 1]
        return {"input_ids": self.input_ids[a:b].tolist(), "labels": self.labels[a:b].tolist()}

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def labelled(self) -> np.ndarray:
        """Labelled tokens per sample, the first token left out (it is never predicted in a packed row)."""
        mask = self.labels != IGNORE_INDEX
        starts = self.offsets[:-1][self.lengths() > 0]
        mask[starts] = False
        seen = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
        return seen[self.offsets[1:]] - seen[self.offsets[:-1]]

    def save(self, folder: Path) -> None:
        for name, arr in zip(FILES, (self.input_ids, self.labels, self.offsets)):
            np.save(folder / name, arr)

    @classmethod
    def load(cls, folder: Path) -> "EncodedDataset":
        # Memory-mapped: a warm start costs no parsing and no copy.
        return cls(*(np.load(folder / name, mmap_mode="r") for name in FILES))
