"""The one error base of glmtune, at the bottom of the layer order.

Every error caused by the user's input (a bad file, record, option or folder)
derives from :class:`GlmtuneError`; the CLI catches that base and prints the
message as one line, ``glmtune: error: ...``, with no traceback. Anything else
reaching the CLI is a bug in glmtune and keeps its traceback.
"""

from __future__ import annotations


class GlmtuneError(Exception):
    """Bad input from the user; the message names the file/record/option, what was expected and the fix."""


class UserError(GlmtuneError):
    """A user error that belongs to no narrower type (command-line arguments, folders, ...)."""
