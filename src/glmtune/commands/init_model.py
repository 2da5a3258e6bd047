"""``glmtune init-model``: write a randomly initialised model folder (native layout)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..version import __version__
from ..errors import UserError
from ..export_folder import StagedExport, check_out_dir
from ..models import SHAPES


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
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty folder, replacing only files a previous glmtune init-model or "
                        "export wrote there (listed in its glmtune_export.json); other files are never touched")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: imports torch; `--help` stays fast
    from ..models import load_model, resolve_dtype, save_model, write_generation_config
    from ..families import load_tokenizer

    out = Path(args.out)
    # --force replaces only files a glmtune manifest lists: a user's own files in --out are never touched.
    check_out_dir(out, force=args.force, inputs={"--tokenizer": Path(args.tokenizer)})
    if args.shape not in SHAPES:
        raise UserError(f"unknown shape {args.shape!r}; known shapes: {', '.join(SHAPES)}")
    tok = load_tokenizer(args.tokenizer)
    shape = SHAPES[args.shape]
    shape_vocab = shape.get("padded_vocab_size") or shape["vocab_size"]  # THUDM-style or Glm4Config shapes
    vocab = shape_vocab if tok.vocab_size <= shape_vocab else tok.vocab_size
    model = load_model(args.shape, dtype=resolve_dtype(args.dtype, "cpu", None), vocab_size=vocab, seed=args.seed)
    provenance = {"glmtune_version": __version__, "kind": "init-model", "shape": args.shape, "layout": args.layout}
    with StagedExport(out, provenance) as stage:
        save_model(model, stage.path, layout=args.layout, family=tok.family_name)
        tok.save_pretrained(stage.path)
        write_generation_config(stage.path, tok)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.shape} ({n / 1e6:.1f}M parameters, {args.layout} layout) to {out}")
    return 0
