"""``glmtune init-model``: write a randomly initialised model folder (native layout)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init-model", help="write a randomly initialised model folder",
                       description="Write a model of a named shape with random weights, plus the tokenizer, "
                                   "for demos and benchmarks.")
    p.add_argument("--shape", required=True, help="named shape, e.g. tiny, small, chatglm3-6b, glm-4-9b")
    p.add_argument("--tokenizer", required=True, help="folder with tokenizer.model, or the file itself")
    p.add_argument("--out", required=True, help="output folder (must be empty or absent unless --force)")
    p.add_argument("--layout", choices=("native", "chatglm3"), default="native")
    p.add_argument("--dtype", default="bf16", help="storage dtype: bf16, fp16 or fp32 (default bf16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..models import SHAPES, load_model, resolve_dtype, save_model, write_generation_config
    from ..tokenizer import load_tokenizer

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UserError(f"{out}: folder is not empty; choose another --out or pass --force")
    if args.shape not in SHAPES:
        raise UserError(f"unknown shape {args.shape!r}; known shapes: {', '.join(SHAPES)}")
    tok = load_tokenizer(args.tokenizer)
    shape_vocab = SHAPES[args.shape]["padded_vocab_size"]
    vocab = shape_vocab if tok.vocab_size <= shape_vocab else tok.vocab_size
    model = load_model(args.shape, dtype=resolve_dtype(args.dtype, "cpu", None), vocab_size=vocab, seed=args.seed)
    save_model(model, out, layout=args.layout)
    tok.save_pretrained(out)
    write_generation_config(out, tok)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.shape} ({n / 1e6:.1f}M parameters, {args.layout} layout) to {out}")
    return 0
