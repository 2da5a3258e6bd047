"""Which device a process computes on: one rule for training, chat, eval and serve."""

from __future__ import annotations

from .errors import GlmtuneError

import os


class DeviceError(GlmtuneError, ValueError):
    """The device asked for is not available here; the message says what to use instead."""


def resolve_device(device: str | None) -> str:
    """``None``/``auto``: the GPU if one is visible, else CPU; under torchrun, plain ``cuda`` is the rank's own GPU."""
    # deferred: torch is heavy
    import torch

    device = "auto" if device is None else str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but no CUDA GPU is visible; use cpu or auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        # Each torchrun process owns one GPU; plain "cuda" would put every rank's model on GPU 0.
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device
