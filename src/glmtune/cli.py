"""The ``glmtune`` command: one small module per subcommand in :mod:`glmtune.commands`.

Each command module defines ``register(subparsers)``, which adds its parser
and sets ``func`` to a function taking the parsed args and returning an exit
status. Modules are imported only when listed here, and heavy imports happen
inside ``func``, so ``glmtune --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import GlmtuneError, UserError  # noqa: F401  (UserError re-exported)
from . import __version__

# Plain registry: subcommand module names under glmtune.commands.
COMMAND_MODULES = ("quickstart", "data", "train", "plan", "chat", "eval", "export", "serve", "init_model", "webui")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glmtune", description="Fine-tune ChatGLM3 and the GLM family natively.")
    parser.add_argument("--version", action="version", version=f"glmtune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        # Every listed module ships with glmtune: a failed import is a packaging bug and must be loud.
        importlib.import_module(f"glmtune.commands.{name}").register(sub)
    return parser


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, reported as ``glmtune: error: ...`` (one base, see errors.py)."""
    return (GlmtuneError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    # bitsandbytes (which PEFT imports when it is installed) logs a warning at import on CPUs with AVX512-BF16 when
    # an optional hub kernel is not loaded, then uses its own: noise on every command's stderr, so only errors show.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # 8-bit layers log "inputs will be cast from bf16/fp32 to float16" at every forward of every layer (--quantize 8).
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except user_error_types() as exc:
        print(f"glmtune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("glmtune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
