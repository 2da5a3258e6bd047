"""``glmtune quickstart``: the whole tool on a small model, offline, in minutes on a CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..quickstart import QuickstartOptions, run_quickstart


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart", help="build, fine-tune, chat with and export a small model (offline, ~2 min on CPU)",
        description="Builds a small GLM, checks and trains it on the bundled self-cognition dataset, chats with "
                    "the result and exports it. Needs no download and no GPU.")
    p.add_argument("--out", default="glmtune-quickstart",
                   help="working folder (default glmtune-quickstart; an earlier quickstart there is replaced)")
    p.add_argument("--name", default="Glimmer", help="the assistant's name to teach (default Glimmer)")
    p.add_argument("--author", default="the glmtune team", help="who the assistant says made it")
    p.add_argument("--tokenizer", default=None,
                   help="a real GLM model folder (any family: ChatGLM2/3, GLM-4, GLM-4-0414) or its tokenizer file "
                        "(default: train a small one on bundled text)")
    p.add_argument("--method", choices=("full", "lora"), default="full", help="fine-tuning method (default full)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    opts = QuickstartOptions(out=Path(args.out), name=args.name, author=args.author, tokenizer=args.tokenizer,
                             method=args.method, steps=args.steps, seed=args.seed)
    run_quickstart(opts)
    return 0
