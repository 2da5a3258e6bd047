"""Lazy package exports (PEP 562): a name is imported from its submodule on first use.

The packages' ``__init__`` use it so that ``glmtune --help``, ``--version`` and config checks do not
import torch and transformers through names they never touch.
"""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, table: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that returns ``name`` from submodule ``table[name]`` of ``package``."""

    def __getattr__(name: str):
        if name in table:
            return getattr(importlib.import_module(f".{table[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
