"""``glmtune export``: a fine-tuning result as a folder other tools load (merged model, official adapter or checkpoint)."""

from __future__ import annotations

import argparse

_DESCRIPTION = """\
Write a fine-tuning result as a folder other tools load:
  merged model   --model BASE [--adapter LORA|FREEZE|FULL] [--layout native|chatglm3]
                 sharded safetensors, config, tokenizer and a generation_config.json that stops chat turns;
                 native = transformers' GLM, chatglm3 = THUDM's layout for the official demos
  official LoRA  --model BASE --adapter LORA --adapter-only
                 a PEFT LoRA adapter for THUDM's ChatGLM3 code (fused query_key_value, same update), as the
                 official finetune_demo writes one; inference_hf.py loads it with its base model
  P-Tuning       --model BASE --prefix PTUNING --layout chatglm3
                 the checkpoint folder the official inference_hf.py loads (base weights + prefix encoder +
                 pre_seq_len); a prefix cannot be merged into the weights
  tokenizer only --tokenizer-only MODEL
                 tokenizer.model, tokenizer.json + tokenizer_config.json (chat template) and
                 generation_config.json, for users who keep their weights
The output folder is never one of the inputs; --force replaces only files a previous glmtune export
listed in its glmtune_export.json, never anything else."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a merged model, an official-layout LoRA adapter or an official P-Tuning checkpoint",
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="base model folder (ChatGLM3 or native GLM layout); required unless "
                                   "--tokenizer-only")
    p.add_argument("--tokenizer-only", dest="tokenizer_only", metavar="MODEL",
                   help="write only the standard tokenizer files (tokenizer.json, chat template, stop ids) of "
                        "MODEL (a folder with tokenizer.model)")
    p.add_argument("--adapter", help="LoRA/DoRA adapter folder (glmtune, PEFT or official ChatGLM3), or a glmtune "
                                     "freeze/full result (optional)")
    p.add_argument("--prefix", help="P-Tuning v2 folder: with --layout chatglm3, written as the official checkpoint")
    p.add_argument("--out", required=True,
                   help="output folder: empty or absent unless --force, and never inside or around an input")
    p.add_argument("--layout", choices=("native", "chatglm3"), default=None,
                   help="native: transformers' GLM (default); chatglm3: THUDM's layout for the official code "
                        "(the default with --adapter-only)")
    p.add_argument("--adapter-only", dest="adapter_only", action="store_true",
                   help="write the LoRA adapter itself in THUDM's layout instead of a merged model")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                   help="storage dtype (default: the base checkpoint's, fp16 for official ChatGLM3; the "
                        "adapter's own with --adapter-only)")
    p.add_argument("--tokenizer", help="folder with tokenizer.model when neither --model nor --adapter has one")
    p.add_argument("--base-path", dest="base_path",
                   help="base model path or hub name recorded in the written adapter_config.json (default: "
                        "--model); never used to load anything")
    p.add_argument("--device", default="cpu", help="where to merge (cpu, cuda); the merge runs in float32")
    p.add_argument("--max-shard-size", dest="max_shard_size", default="2GB",
                   help="largest safetensors shard (default 2GB, like the official ChatGLM3 files)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty folder, replacing only a previous glmtune export's files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: imports torch, transformers; `--help` stays fast
    from ..export import ExportError, export_model, parse_size

    if args.tokenizer_only:
        return _tokenizer_only(args)
    if not args.model:
        raise ExportError("glmtune export needs --model BASE (or --tokenizer-only MODEL for the tokenizer files only)")
    result = export_model(args.model, args.out, adapter=args.adapter, prefix=args.prefix, layout=args.layout,
                          adapter_only=args.adapter_only, dtype=args.dtype, force=args.force,
                          tokenizer_path=args.tokenizer, base_path_override=args.base_path, device=args.device,
                          max_shard_bytes=parse_size(args.max_shard_size))
    dtype = str(result.dtype).replace("torch.", "") if result.dtype is not None else "adapter's dtype"
    if result.kind == "adapter":
        print(f"exported {args.adapter} -> {result.out_dir} (LoRA adapter in THUDM's ChatGLM3 layout, {dtype})")
    elif result.kind == "ptuning":
        print(f"exported {args.model} + {args.prefix or args.adapter} -> {result.out_dir} (official P-Tuning v2 "
              f"checkpoint, {dtype}, {result.num_parameters / 1e6:.1f}M parameters)")
    else:
        what = f"{args.model} + {args.adapter} (merged)" if args.adapter else str(args.model)
        print(f"exported {what} -> {result.out_dir} ({result.layout} layout, {dtype}, "
              f"{result.num_parameters / 1e6:.1f}M parameters)")
    print("files: " + ", ".join(result.files))
    if result.replaced:
        print("replaced from the previous glmtune export: " + ", ".join(result.replaced))
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _tokenizer_only(args: argparse.Namespace) -> int:
    # deferred: imports torch, transformers; `--help` stays fast
    from ..export import ExportError, export_tokenizer

    given = [o for o, v in (("--model", args.model), ("--adapter", args.adapter), ("--prefix", args.prefix),
                            ("--adapter-only", args.adapter_only), ("--tokenizer", args.tokenizer)) if v]
    if given:
        raise ExportError(f"--tokenizer-only {args.tokenizer_only} writes the tokenizer files only; drop "
                          f"{', '.join(given)}")
    result = export_tokenizer(args.tokenizer_only, args.out, force=args.force)
    print(f"exported the tokenizer of {args.tokenizer_only} -> {result.out_dir} (tokenizer.json, chat template, "
          "stop ids; AutoTokenizer loads it without trust_remote_code)")
    print("files: " + ", ".join(result.files))
    if result.replaced:
        print("replaced from the previous glmtune export: " + ", ".join(result.replaced))
    return 0
