"""The Gradio app: five pages laid out over the callbacks in :mod:`.pages`, and its launch.

``AppContext`` and ``ui_errors`` live in :mod:`.context` (re-exported here), so the pages import
them without importing this module back.

Gradio is imported here only (and this module only by ``glmtune webui``):
it is a heavy dependency that the rest of glmtune never needs.
"""

from __future__ import annotations

import os
import sys

from ..errors import UserError
from .context import AppContext, ui_errors
from .chat import ChatState

AUTH_ENV = "GLMTUNE_WEBUI_AUTH"
SHARE_WARNING = ("glmtune webui: WARNING: --share publishes this UI on a public gradio.live address; anyone "
                 "with the link can read your data, run training on this machine and write files where it "
                 "can. Use --auth user:pass, and stop the UI when you are done.")


def build_app(ctx: AppContext):
    """The ``gr.Blocks`` app (not launched)."""
    import gradio as gr  # heavy dependency: only the web UI needs it

    # deferred: imports gradio, peft, torch, transformers
    from . import pages

    with gr.Blocks(title="glmtune") as app:
        model_state = gr.State(ChatState())  # per browser session; one loaded model shared by Evaluate and Chat
        gr.Markdown(f"# glmtune\nFine-tune ChatGLM3 and the GLM family. Runs folder: `{ctx.runs_root}`")
        with gr.Tabs():
            with gr.Tab("Data", id="data"):
                pages.data_page(ctx)
            with gr.Tab("Train", id="train"):
                pages.train_page(ctx)
            with gr.Tab("Evaluate", id="evaluate"):
                pages.eval_page(ctx, model_state)
            with gr.Tab("Chat", id="chat"):
                pages.chat_page(ctx, model_state)
            with gr.Tab("Export", id="export"):
                pages.export_page(ctx)
    return app


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``user:pass`` (from --auth or $GLMTUNE_WEBUI_AUTH) as a pair, or None for no login."""
    value = value if value is not None else os.environ.get(AUTH_ENV)
    if not value:
        return None
    user, colon, password = value.partition(":")
    if not colon or not user or not password:
        raise UserError(f"--auth / ${AUTH_ENV}: expected user:password, got {value.split(':')[0]!r}...")
    return user, password


def exposure_warnings(host: str, share: bool, has_login: bool) -> list[str]:
    """What to tell the user before the UI becomes reachable from other machines."""
    warnings = [SHARE_WARNING] if share else []
    if host not in ("127.0.0.1", "localhost", "::1"):
        warnings.append(f"glmtune webui: listening on {host}: other machines on the network can reach it"
                        + ("" if has_login else "; consider --auth user:pass"))
    return warnings


def launch(ctx: AppContext, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           auth: str | None = None, block: bool = True):
    """Serve the app; returns it (``block=False`` keeps the server in a background thread, for tests)."""
    login = parse_auth(auth)
    for warning in exposure_warnings(host, share, login is not None):
        print(warning, file=sys.stderr)
    ctx.runs_root.mkdir(parents=True, exist_ok=True)
    app = build_app(ctx)
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=host, server_port=port, share=share, auth=login, prevent_thread_lock=not block,
               inbrowser=False, quiet=not block, allowed_paths=[str(ctx.runs_root.resolve())])
    return app


__all__ = ["AppContext", "build_app", "exposure_warnings", "launch", "parse_auth", "ui_errors"]
