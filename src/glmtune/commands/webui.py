"""``glmtune webui``: the Gradio web UI (data, train, evaluate, chat, export) in a browser."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..webui.app import AppContext, launch

EPILOG = """\
The UI binds to 127.0.0.1 (this machine only) unless --host says otherwise.
--share publishes it through a public gradio.live link: anyone with the link can
use it, so combine it with --auth. The login can also come from the environment:
GLMTUNE_WEBUI_AUTH=user:password. Training started from the UI runs as its own
`glmtune train` process in RUNS/NAME, so it survives a UI restart; runs the
command line writes under RUNS (output.dir=RUNS/NAME) are listed too.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("webui", help="web UI for the whole workflow (needs gradio: pip install 'glmtune[webui]')",
                       description="Serve a Gradio web UI: check data, train, watch, evaluate, chat and export.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also publish a public gradio.live link (with a warning)")
    p.add_argument("--auth", default=None, help="require a login, user:password (or set GLMTUNE_WEBUI_AUTH)")
    p.add_argument("--runs", default="runs", help="folder holding training runs, one subfolder each (default runs)")
    p.add_argument("--model", default="", help="model folder pre-filled in the forms")
    p.add_argument("--data", default="", help="data file pre-filled in the forms")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401  (heavy dependency, only for this command)
    except ImportError:
        raise UserError("glmtune webui needs Gradio: pip install 'glmtune[webui]' (or pip install gradio)") from None

    ctx = AppContext(runs_root=Path(args.runs).expanduser(), model=args.model, data=args.data)
    launch(ctx, host=args.host, port=args.port, share=args.share, auth=args.auth)
    return 0
