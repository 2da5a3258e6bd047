"""``glmtune eval``: generation on a dataset, ROUGE-1/2/L and BLEU-4, predictions saved as JSONL."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data.by_name import DEFAULT_DATASET_DIR, all_conversations, named_sources
from ..data.config import DataConfig
from ..data.registry import Source
from ..errors import UserError
from .chat import add_model_arguments
from .data import _columns, _refuse_input_as_output

RESULT_FILES = ("predictions.jsonl", "metrics.json")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="generate on a dataset and score ROUGE-1/2/L and BLEU-4",
                       description="Generate a reply for every assistant turn of a dataset (left-padded batches, "
                                   "greedy by default) and score it as the training evaluation does. Writes "
                                   "predictions.jsonl and metrics.json to --out.")
    add_model_arguments(p)
    p.add_argument("--data", default=None, help="dataset file (JSON, JSONL, CSV, Parquet ...)")
    p.add_argument("--dataset", metavar="NAME[,NAME...]",
                   help="evaluate registry datasets by name instead of --data (as train/data check --dataset): from "
                        "--registry, else DATASET_DIR/dataset_info.json, else the bundled registry")
    p.add_argument("--dataset-dir", default=DEFAULT_DATASET_DIR,
                   help="folder of the --dataset files and of dataset_info.json (default: data, as LLaMA-Factory)")
    p.add_argument("--registry", default=None,
                   help="registry file for --dataset (a relative path is looked for in --dataset-dir first, then here)")
    p.add_argument("--format", default="auto", help="record format (default: detected from the first record)")
    p.add_argument("--columns", default="",
                   help="column mapping src=dst[,src=dst] (e.g. content=user,summary=assistant), as for glmtune data")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    p.add_argument("--max-samples", dest="max_samples", type=int, default=None, help="evaluate the first N samples")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=256)
    p.add_argument("--max-input-length", dest="max_input_length", type=int, default=1024,
                   help="prompt tokens kept (the last ones, after [gMASK] sop); default 1024")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), as the official evaluation")
    p.add_argument("--top-p", dest="top_p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for predictions.jsonl and metrics.json (default: print only); "
                                               "existing result files there are not overwritten unless --force")
    p.add_argument("--force", action="store_true",
                   help="replace predictions.jsonl and metrics.json in --out (nothing else there is touched)")
    p.set_defaults(func=run)


def load_dataset(path, fmt: str, columns: str = "", dataset: str | None = None, dataset_dir: str | None = None,
                 registry: str | None = None):
    """Conversations of ``--data`` (a file) or ``--dataset`` (registry names, each read as its entry says)."""
    if bool(path) == bool(dataset):
        raise UserError("glmtune eval needs one of --data FILE or --dataset NAME[,NAME...]")
    cfg = DataConfig(format=fmt, columns=_columns(columns))
    if dataset:
        sources = named_sources(dataset, dataset_dir, registry)
    else:
        if not Path(path).is_file():
            raise UserError(f"{path}: dataset file not found")
        sources = [Source(Path(path))]
    return all_conversations(sources, cfg)


def check_out(args: argparse.Namespace) -> None:
    """Refuse results that would overwrite an input (even with --force) or earlier results (without it)."""
    out = Path(args.out)
    inputs = [p for p in (args.data, args.model, args.adapter, args.prefix, args.tokenizer) if p]
    for name in RESULT_FILES:
        _refuse_input_as_output(str(out / name), inputs, option="--out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; choose a folder for the results")
    existing = [name for name in RESULT_FILES if (out / name).exists() or (out / name).is_symlink()]
    if existing and not args.force:
        raise UserError(f"--out {out}: {existing[0]} already exists; choose another --out or pass --force to "
                        f"replace {' and '.join(RESULT_FILES)} there")


def run(args: argparse.Namespace) -> int:
    # deferred: tqdm.auto is slow to import; only a shown bar needs it; `--help` stays fast
    from tqdm.auto import tqdm

    # deferred: imports torch; `--help` stays fast
    from ..infer.evaluate import EvalSettings, build_samples, evaluate, settings_dict, write_results
    from ..infer.loading import load_for_inference

    try:
        settings = EvalSettings(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                max_input_length=args.max_input_length, max_samples=args.max_samples,
                                temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.out:
        check_out(args)
    conversations = load_dataset(args.data, args.format, args.columns, args.dataset, args.dataset_dir, args.registry)
    model, tok = load_for_inference(args.model, adapter=args.adapter, prefix=args.prefix, tokenizer=args.tokenizer,
                                    dtype=args.dtype, device=args.device, family=args.family, quantize=args.quantize)
    total = len(build_samples(conversations, tok, settings))
    with tqdm(total=total, desc="eval", unit="sample", file=sys.stderr) as bar:
        result = evaluate(model, tok, conversations, settings, progress=bar.update)
    print(json.dumps(result.metrics, ensure_ascii=False))
    if args.out:
        info = {"model": args.model, "adapter": args.adapter, "prefix": args.prefix, "data": args.data or args.dataset,
                "settings": settings_dict(settings)}
        pred_path, metrics_path = write_results(result, Path(args.out), info)
        print(f"wrote {pred_path} ({result.num_samples} samples) and {metrics_path}", file=sys.stderr)
    return 0
