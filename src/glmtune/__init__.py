"""glmtune: fine-tune ChatGLM3 and the GLM family natively (no remote code)."""

__version__ = "0.1.0"

from .models import CheckpointError, load_model, save_model  # noqa: E402
from .tokenizer import ChatGLMTokenizer, load_tokenizer  # noqa: E402

__all__ = ["ChatGLMTokenizer", "CheckpointError", "load_model", "load_tokenizer", "save_model", "__version__"]
