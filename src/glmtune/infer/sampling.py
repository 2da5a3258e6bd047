"""Choosing the next token from logits: greedy, or sampling with temperature / top-k / top-p.

The warpers run in the order transformers' ``generate`` applies them
(repetition penalty, temperature, top-k, top-p), so a seed-for-seed match is
not promised but the distribution sampled from is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingConfig:
    """How the next token is chosen. ``temperature <= 0`` means greedy decoding."""

    max_new_tokens: int = 512
    """Generated tokens at most (the stop token, when produced, counts as one)."""
    temperature: float = 0.8
    """Softmax temperature; 0 (or less) gives greedy decoding. Official chat default: 0.8."""
    top_p: float = 0.8
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 disables)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 disables)."""
    repetition_penalty: float = 1.0
    """>1 makes tokens already in the sequence less likely (CTRL paper, as transformers does)."""
    seed: int | None = None
    """Seed for sampling, for reproducible replies; None draws from torch's global generator."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 disables it), got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive / multiply negative logits of tokens in ``seen`` (B, T) by ``penalty``."""
    if penalty == 1.0:
        return logits
    picked = torch.gather(logits, 1, seen)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return logits.scatter(1, seen, picked)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the most likely tokens whose cumulative probability reaches ``p`` (always at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # Drop a token when the tokens before it already reach p; the first token always stays.
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= p
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_tokens(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None,
                seen: torch.Tensor | None = None) -> torch.Tensor:
    """Next token per row of ``logits`` (B, V) -> (B,)."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.greedy:
        return logits.argmax(dim=-1)
    logits = top_p_filter(top_k_filter(logits / config.temperature, config.top_k), config.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator
