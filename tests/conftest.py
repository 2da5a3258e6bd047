"""Shared test helpers: where the reference fixtures live, and tiny in-process models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("GLMTUNE_FIXTURES", ROOT.parent / "shared" / "fixtures"))
TINY = FIXTURES / "chatglm3-tiny"
ENCODINGS = FIXTURES / "chatglm3-encodings.jsonl"

_SKIP_WHY = (
    f"reference fixtures not found at {FIXTURES} (the official ChatGLM3 tokenizer and tiny checkpoint); "
    "put ../shared/fixtures beside the project or set GLMTUNE_FIXTURES"
)


def need_fixtures() -> Path:
    """Skip the calling test, saying why, when the fixtures folder is absent."""
    if not TINY.is_dir():
        pytest.skip(_SKIP_WHY)
    return FIXTURES


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return need_fixtures()


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    need_fixtures()
    return TINY


@pytest.fixture(scope="session")
def tokenizer():
    from glmtune import load_tokenizer

    need_fixtures()
    return load_tokenizer(TINY)


@pytest.fixture()
def tiny_model():
    """A fresh random tiny GLM (fixture dimensions, real vocabulary size), float32."""
    from glmtune import load_model

    return load_model("tiny", dtype="fp32", seed=0)


def train_steps(model, optimizer, steps: int, **batch) -> list[float]:
    """``steps`` optimizer steps on one batch (a plain torch loop); the losses, model left in eval mode."""
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def greedy_ids(model, input_ids, steps: int = 16):
    """Step-by-step greedy decoding with the KV cache, as a generation loop drives the model (no eos stop)."""
    import torch

    mask = torch.ones_like(input_ids)
    out = model(input_ids=input_ids, attention_mask=mask, use_cache=True)
    generated = []
    for _ in range(steps):
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        generated.append(token)
        mask = torch.cat([mask, torch.ones_like(token)], dim=-1)
        out = model(input_ids=token, attention_mask=mask, past_key_values=out.past_key_values, use_cache=True)
    return torch.cat(generated, dim=-1)
