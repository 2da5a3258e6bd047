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
