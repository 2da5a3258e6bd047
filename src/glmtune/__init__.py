"""glmtune: fine-tune ChatGLM3 and the GLM family natively (no remote code)."""

from .version import __version__

# Loaded on first use (PEP 562): models and the tokenizer import torch, which `glmtune --help`, `--version`
# and `glmtune train --help-config` must not pay for.
_LAZY = {"CheckpointError": "models", "load_model": "api", "save_model": "models",
         "ChatGLMTokenizer": "tokenizer", "load_tokenizer": "tokenizer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["ChatGLMTokenizer", "CheckpointError", "load_model", "load_tokenizer", "save_model", "__version__"]
