"""What every web UI page shares: the app's starting context and the error wrapper of its callbacks.

Its own module so that :mod:`.pages` and :mod:`.app` both import it and not each other.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path

from ..errors import GlmtuneError


@dataclass
class AppContext:
    """What the UI starts from: where runs live, and default paths for the forms."""

    runs_root: Path
    model: str = ""
    data: str = ""


def ui_errors(fn):
    """Show a glmtune error (bad input) as a Gradio error message instead of a traceback."""
    import gradio as gr  # heavy dependency: only the web UI needs it

    def convert(exc: BaseException):
        return gr.Error(str(exc), print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except (GlmtuneError, FileNotFoundError, ValueError) as exc:
                raise convert(exc) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (GlmtuneError, FileNotFoundError, ValueError) as exc:
            raise convert(exc) from None
    return wrapper
