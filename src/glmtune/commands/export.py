"""``glmtune export``: merge a LoRA/DoRA adapter into its base and write a standalone model folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="merge an adapter into the base model and write a standalone folder",
        description="Merge a LoRA/DoRA adapter into its base model (or just convert a model when no adapter is "
                    "given) and write sharded safetensors, config, tokenizer files and a generation_config.json "
                    "that stops chat turns. P-Tuning prefixes cannot be merged.")
    p.add_argument("--model", required=True, help="base model folder (ChatGLM3 or native GLM layout)")
    p.add_argument("--adapter", help="LoRA/DoRA adapter folder (glmtune, PEFT or official ChatGLM3), or a glmtune "
                                     "freeze result (optional)")
    p.add_argument("--prefix", help="P-Tuning v2 folder: refused with the options, since it cannot be merged")
    p.add_argument("--out", required=True, help="output folder (must be empty or absent unless --force)")
    p.add_argument("--layout", choices=("native", "chatglm3"), default="native",
                   help="native: transformers' GLM (default); chatglm3: THUDM's layout for the official demos")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                   help="storage dtype (default: the base checkpoint's, fp16 for official ChatGLM3)")
    p.add_argument("--tokenizer", help="folder with tokenizer.model when neither --model nor --adapter has one")
    p.add_argument("--base-path", dest="base_path",
                   help="base model path to use instead of the one recorded in adapter_config.json")
    p.add_argument("--device", default="cpu", help="where to merge (cpu, cuda); the merge runs in float32")
    p.add_argument("--max-shard-size", dest="max_shard_size", default="2GB",
                   help="largest safetensors shard (default 2GB, like the official ChatGLM3 files)")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_model, parse_size

    result = export_model(args.model, args.out, adapter=args.adapter, prefix=args.prefix, layout=args.layout,
                          dtype=args.dtype, force=args.force, tokenizer_path=args.tokenizer,
                          base_path_override=args.base_path, device=args.device,
                          max_shard_bytes=parse_size(args.max_shard_size))
    what = f"{args.model} + {args.adapter} (merged)" if args.adapter else str(args.model)
    dtype = str(result.dtype).replace("torch.", "")
    print(f"exported {what} -> {result.out_dir} ({result.layout} layout, {dtype}, "
          f"{result.num_parameters / 1e6:.1f}M parameters)")
    print("files: " + ", ".join(result.files))
    return 0
