"""``glmtune plan``: the expected peak memory of a training config per device, and what fits a given memory."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError

EPILOG = """examples:
  glmtune plan examples/lora.yaml --memory 24GiB
  glmtune plan examples/lora.yaml model.path=chatglm3-6b model.quantization.bits=4 --memory 12GiB
  glmtune plan examples/ptuning.yaml training.batch_size=1 training.gradient_checkpointing=true

Nothing is loaded: the model's shape comes from its config.json (or a named shape such as chatglm3-6b or
glm-4-9b). precision auto plans for a bf16 GPU unless model.device=cpu."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="expected peak memory of a training config, and the largest batch/length that fits",
                       description="Estimate a training run's peak memory per device, before anything loads: "
                                   "weights, trained parameters, gradients, optimizer state and activations, with "
                                   "and without gradient checkpointing.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG.yaml", help="a training config (as for glmtune train)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. training.batch_size=8")
    p.add_argument("--memory", metavar="SIZE", help="memory of one device (24GiB, 16GB, 12000MiB): also print the "
                                                    "largest batch and sequence length that fit it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the planner reads the model shape via glmtune.models, which imports torch; --help stays fast
    from ..config import load_config
    from ..train.plan import format_plan, model_shape, parse_memory, plan_name, setup_from_config

    if not Path(args.config).is_file():
        raise UserError(f"{args.config}: config file not found")
    for item in args.overrides:
        if "=" not in item:
            raise UserError(f"unexpected argument {item!r}: overrides look like section.key=value")
    memory = parse_memory(args.memory) if args.memory else None
    cfg = load_config(args.config, list(args.overrides), check_files=False)
    shape = model_shape(cfg.model.path)
    print(format_plan(plan_name(cfg.model.path), shape, setup_from_config(cfg), memory), end="")
    return 0
