"""``glmtune train``: fine-tune with a config file (ours or the official ChatGLM3 demo's).

Two call shapes::
    glmtune train CONFIG.yaml [section.key=value ...]
    glmtune train DATA_DIR MODEL_DIR CONFIG.yaml [yes|no|N]     # as finetune_hf.py

In the second, ``yes`` resumes from the newest checkpoint and ``N`` from
``checkpoint-N`` (``OUTPUT/checkpoint-N``), exactly as the official script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ..config import config_to_dict, load_config
from ..config.doc import describe_config
from ..config.llamafactory import translation_notes
from ..data.by_name import DEFAULT_DATASET_DIR, registry_path
from ..errors import UserError

EPILOG = """examples:
  glmtune train examples/lora.yaml training.max_steps=200 output.dir=runs/lora
  glmtune train data/AdvertiseGen_fix THUDM/chatglm3-6b configs/lora.yaml yes
  glmtune train examples/lora.yaml training.resume=yes      # continue the newest checkpoint

exit status: 0 done, 2 bad input, 1 training failed, 130/143 stopped by SIGINT/SIGTERM
(a checkpoint was saved; add training.resume=yes to continue)"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a model (LoRA, P-Tuning v2, freeze, full)",
                       description="Fine-tune a ChatGLM3/GLM model as a config file says.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", metavar="ARG",
                   help="CONFIG.yaml [key=value ...], or DATA_DIR MODEL_DIR CONFIG.yaml [yes|N] (official)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summaries")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config and exit (no training); for a LLaMA-Factory YAML, first what "
                        "each of its keys became")
    p.add_argument("--dataset", metavar="NAME[,NAME...]",
                   help="train on these registry datasets (name or name:ratio) instead of the config's files: "
                        "from data.registry_file, else DATA_DIR/dataset_info.json (LLaMA-Factory's), else the "
                        "bundled registry of public datasets (alpaca_zh, belle_*, firefly, AdvertiseGen, identity...)")
    p.add_argument("--dataset-dir", metavar="DIR",
                   help="folder of the --dataset files and of dataset_info.json (sets data.data_dir; LLaMA-Factory's "
                        "dataset_dir)")
    p.add_argument("--registry", metavar="FILE",
                   help="registry file the dataset names come from (sets data.registry_file; a relative path is "
                        "looked for in --dataset-dir, default data, first, then here)")
    p.add_argument("--help-config", action="store_true",
                   help="print every config option with its type, default and help, and exit")
    p.set_defaults(func=run)


def parse_call(args: list[str]) -> tuple[str, list[str], dict]:
    """(config path, overrides, load_config keywords) from the positional arguments."""
    if not args:
        raise UserError("glmtune train needs a config: glmtune train CONFIG.yaml [key=value ...] "
                        "or glmtune train DATA_DIR MODEL_DIR CONFIG.yaml [yes|N]")
    is_yaml = [a.lower().endswith((".yaml", ".yml")) for a in args]
    if len(args) >= 3 and is_yaml[2] and not is_yaml[0] and "=" not in args[0] + args[1]:
        extra = args[3:]
        overrides: list[str] = []
        if extra and "=" not in extra[0]:
            resume = extra.pop(0)
            if resume.lower() not in ("", "no"):
                if not (resume.isdigit() or resume.lower() == "yes"):
                    raise UserError(f"resume argument {resume!r}: expected yes, no or a checkpoint step number")
                overrides.append(f"training.resume={resume}")
        overrides += _overrides(extra)
        return args[2], overrides, {"data_dir": args[0], "model_dir": args[1]}
    return args[0], _overrides(args[1:]), {}


def _overrides(items: list[str]) -> list[str]:
    for item in items:
        if "=" not in item:
            raise UserError(f"unexpected argument {item!r}: overrides look like section.key=value "
                            "(e.g. training.learning_rate=1e-4)")
    return items


def run(args: argparse.Namespace) -> int:
    if args.help_config:
        print(describe_config(), end="")
        return 0

    config, overrides, kwargs = parse_call(list(args.args))
    if not Path(config).is_file():
        raise UserError(f"{config}: config file not found")
    if args.dataset_dir:
        kwargs["data_dir"] = args.dataset_dir
    if args.registry or args.dataset_dir:
        overrides.append(f"data.registry_file={registry_path(args.registry, args.dataset_dir or DEFAULT_DATASET_DIR)}")
    cfg = load_config(config, overrides, datasets=args.dataset, **kwargs)
    if args.print_config:
        notes = translation_notes(config, overrides)
        if notes:
            print("# LLaMA-Factory config translated (key: value -> glmtune option):")
            print("".join(f"#   {note}\n" for note in notes), end="")
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True), end="")
        return 0
    # deferred: imports peft, torch, transformers; `--help` stays fast
    from ..train import TrainingError, describe, run_training

    try:
        result = run_training(cfg, quiet=args.quiet, config_file=Path(config))
    except TrainingError as exc:
        print(f"glmtune: training stopped: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"done: {describe(result)}; output in {result.output_dir}", file=sys.stderr)
    if result.interrupted:
        return 130 if result.interrupted == "SIGINT" else 143
    return 0
