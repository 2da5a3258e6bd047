"""The error type of :mod:`glmtune.methods`."""

from __future__ import annotations

from ..errors import GlmtuneError


class MethodError(GlmtuneError, ValueError):
    """A fine-tuning method cannot be prepared, saved or applied.

    The message names the file or option at fault, what was expected and the
    fix; the CLI prints it as one line (``glmtune: error: ...``), no traceback.
    """
