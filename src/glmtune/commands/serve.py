"""``glmtune serve``: a minimal OpenAI-compatible chat API for a model (+ adapter or prefix)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .chat import add_model_arguments, add_sampling_arguments, sampling_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve an OpenAI-compatible /v1/chat/completions API",
                       description="Serve POST /v1/chat/completions (plain and streaming, with tools) and "
                                   "GET /v1/models. Sampling options set the defaults a request may override.")
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", default=None, help="model id reported by the API (default: the model folder's name)")
    add_sampling_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: imports torch; `--help` stays fast
    from ..infer.loading import load_for_inference
    from ..infer.server import make_server

    defaults = sampling_from_args(args)
    model, tok = load_for_inference(args.model, adapter=args.adapter, prefix=args.prefix, tokenizer=args.tokenizer,
                                    dtype=args.dtype, device=args.device)
    name = args.name or Path(args.adapter or args.prefix or args.model).resolve().name
    server = make_server(model, tok, host=args.host, port=args.port, name=name, defaults=defaults)
    host, port = server.server_address[:2]
    print(f"glmtune serve: {name} at http://{host}:{port}/v1 (POST /v1/chat/completions, GET /v1/models); "
          "Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
