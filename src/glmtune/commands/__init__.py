"""Subcommands of the ``glmtune`` CLI; each module defines ``register(subparsers)``."""
