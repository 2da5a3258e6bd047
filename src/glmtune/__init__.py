"""glmtune: fine-tune ChatGLM3 and the GLM family natively (no remote code)."""

from .lazy import lazy_exports
from .version import __version__

# Loaded on first use (PEP 562): models and the tokenizer import torch, which `glmtune --help`, `--version`
# and `glmtune train --help-config` must not pay for.
_LAZY = {"CheckpointError": "models", "load_model": "api", "save_model": "models",
         "ChatGLMTokenizer": "tokenizer", "load_tokenizer": "families"}
_LAZY.update({"chat": "infer.pychat", "stream_chat": "infer.pychat"})  # the official model.chat / stream_chat
__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = ["ChatGLMTokenizer", "CheckpointError", "chat", "load_model", "load_tokenizer", "save_model", "stream_chat",
           "__version__"]
