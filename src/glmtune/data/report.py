"""What the data layer did: counts, skipped records and why, truncation, token lengths."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

PERCENTILES = (50, 90, 99, 100)


@dataclass
class SplitReport:
    """Counts for one split (train, validation or test)."""

    records: int = 0
    """Records read (valid or not)."""
    samples: int = 0
    """Samples kept for training/evaluation."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Invalid records left out, by reason (only with skip_invalid)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Valid records left out by the length policy, by reason."""
    truncated: int = 0
    """Samples longer than the length limit (cut, or left out under truncation=drop)."""
    turns: int = 0
    """User turns in kept samples."""
    tool_calls: int = 0
    """Tool calls in kept samples."""
    tokens: int = 0
    """Tokens in kept samples (after truncation)."""
    learned_tokens: int = 0
    """Tokens with a label (loss) in kept samples."""
    length_percentiles: dict[str, int] = field(default_factory=dict)
    """Sample length before truncation: p50, p90, p99, max."""
    warnings: dict[str, int] = field(default_factory=dict)
    """Records used with a warning (duplicate keys, differences from the official demo) or left out for length,
    by kind."""
    examples: list[str] = field(default_factory=list)
    """First few problems and warnings, as FILE:LINE messages."""
    formats: dict[str, str] = field(default_factory=dict)
    """Format used for each file."""

    def add_lengths(self, full_lengths: list[int] | np.ndarray) -> None:
        if len(full_lengths):
            values = np.rint(np.percentile(np.asarray(full_lengths), PERCENTILES))
            self.length_percentiles = {("max" if p == 100 else f"p{p}"): int(v) for p, v in zip(PERCENTILES, values)}

    def merge(self, other: "SplitReport") -> None:
        for name in ("records", "samples", "truncated", "turns", "tool_calls", "tokens", "learned_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.skipped = dict(Counter(self.skipped) + Counter(other.skipped))
        self.dropped = dict(Counter(self.dropped) + Counter(other.dropped))
        self.warnings = dict(Counter(self.warnings) + Counter(other.warnings))
        self.examples = (self.examples + other.examples)[:10]
        self.formats.update(other.formats)

    def format(self, name: str) -> str:
        lines = [f"{name}: {self.records} records -> {self.samples} samples, {self.turns} turns, "
                 f"{self.tool_calls} tool calls, {self.tokens} tokens ({self.learned_tokens} learned)"]
        if self.formats:
            lines.append("  format: " + ", ".join(f"{fmt} ({path})" for path, fmt in self.formats.items()))
        if self.length_percentiles:
            lines.append("  length (tokens, before truncation): "
                         + ", ".join(f"{k} {v}" for k, v in self.length_percentiles.items()))
        if self.truncated:
            lines.append(f"  truncated: {self.truncated}")
        for what, counts in (("skipped (invalid)", self.skipped), ("dropped", self.dropped),
                             ("warnings", self.warnings)):
            if counts:
                lines.append(f"  {what}: {sum(counts.values())} ("
                             + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ")")
        lines += [f"    {e}" for e in self.examples[:5]]
        return "\n".join(lines)


@dataclass
class DataReport:
    """Reports of every prepared split, plus whether they came from the cache."""

    splits: dict[str, SplitReport] = field(default_factory=dict)
    from_cache: dict[str, bool] = field(default_factory=dict)
    batching: str = ""
    """How training batches are formed (packed rows or padded), from ``DataConfig.batching_note``."""

    def __getattr__(self, name):
        # Train-split shortcuts (report.records, report.truncated, ...) for the common case.
        if name in SplitReport.__dataclass_fields__ and "train" in self.__dict__.get("splits", {}):
            return getattr(self.__dict__["splits"]["train"], name)
        raise AttributeError(name)

    def to_dict(self) -> dict:
        return {"splits": {k: asdict(v) for k, v in self.splits.items()}, "from_cache": dict(self.from_cache)}

    def format(self) -> str:
        out = []
        for name, rep in self.splits.items():
            text = rep.format(name)
            if self.from_cache.get(name):
                text += "\n  (from cache)"
            out.append(text)
        if self.batching and "train" in self.splits:
            out.append(self.batching)
        return "\n".join(out)
