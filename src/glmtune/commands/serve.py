"""``glmtune serve``: an OpenAI-compatible chat API for a model (+ adapter or prefix), batching concurrent requests."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import UserError
from .chat import add_model_arguments, add_sampling_arguments, sampling_from_args

API_KEY_ENV = "GLMTUNE_API_KEY"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve an OpenAI-compatible /v1/chat/completions API",
                       description="Serve POST /v1/chat/completions (plain and streaming, tools, stop strings), "
                                   "GET /v1/models and GET /health on FastAPI + uvicorn. Concurrent requests are "
                                   "decoded together on the one model (continuous batching). Sampling options set "
                                   "the defaults a request may override.")
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", default=None, help="model id reported by the API (default: the model folder's name)")
    p.add_argument("--max-batch", dest="max_batch", type=_positive, default=32,
                   help="requests decoded together at most (default 32; 1 = one at a time)")
    p.add_argument("--max-queue", dest="max_queue", type=int, default=256,
                   help="requests waiting for a batch slot at most; more get 503 (default 256)")
    p.add_argument("--api-key", dest="api_key", default=None,
                   help=f"require 'Authorization: Bearer KEY' (default: the {API_KEY_ENV} environment variable; "
                        "none = open)")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", default=[], metavar="ORIGIN",
                   help="allow browser requests from ORIGIN (repeatable; '*' for any); default: none")
    p.add_argument("--no-access-log", dest="access_log", action="store_false",
                   help="do not print one line per request")
    add_sampling_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.max_queue < 0:
        raise UserError(f"--max-queue must be >= 0, got {args.max_queue}")
    try:
        # deferred: imports torch, FastAPI and uvicorn; `--help` stays fast
        from ..infer.server import make_server
    except ImportError as exc:
        raise UserError(f"glmtune serve needs FastAPI and uvicorn ({exc}); install them with "
                        "pip install 'glmtune[serve]'") from None
    from ..infer.loading import load_for_inference  # deferred: imports torch

    defaults = sampling_from_args(args)
    model, tok = load_for_inference(args.model, adapter=args.adapter, prefix=args.prefix, tokenizer=args.tokenizer,
                                    dtype=args.dtype, device=args.device, family=args.family, quantize=args.quantize)
    name = args.name or Path(args.adapter or args.prefix or args.model).resolve().name
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    server = make_server(model, tok, host=args.host, port=args.port, name=name, defaults=defaults,
                         max_batch=args.max_batch, max_queue=args.max_queue, api_key=api_key,
                         cors_origins=args.cors_origins, access_log=args.access_log)
    host, port = server.server_address[:2]
    print(f"glmtune serve: {name} at http://{host}:{port}/v1 (POST /v1/chat/completions, GET /v1/models); "
          f"batches up to {args.max_batch} requests; {'API key required' if api_key else 'no API key'}; "
          "Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
