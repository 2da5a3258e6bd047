"""FSDP2 under torchrun / accelerate launch: torch's ``fully_shard`` on the prepared model, thinly.

accelerate 1.16 applies its FSDP plugin only to GPU-type process groups (it ignores it for
multi-CPU), so glmtune calls ``torch.distributed.fsdp.fully_shard`` itself: the same code on
CPU (gloo) and GPU (NCCL), testable here. What happens, in order:

* the first rank loads the weights and prepares the method; every other rank builds the same
  model on the meta device (no memory) and prepares the method there;
* each decoder layer becomes one FSDP unit, the rest (embeddings, final norm, output layer,
  a P-Tuning prefix encoder) the root unit; mixed precision follows the run's compute dtype;
* the other ranks' shards are filled from the first rank's weights
  (``set_model_state_dict(..., broadcast_from_rank0=True)``), buffers broadcast;
* checkpoints hold the trained parameters and the optimizer state sharded
  (``torch.distributed.checkpoint``, one file per rank, reshardable to another world size);
* the final result is gathered to the first rank (trained parameters only) and saved by the
  method as usual, from a meta-device copy of the prepared model filled with those tensors.

The Trainer is told the model is already sharded through the attribute transformers reads for
models sharded at load time (``is_distributed_loading_by_transformers``): it then neither wraps it
in DDP nor moves it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from ..models import SHAPES, find_glm, load_model
from ..models.loading import empty_model, read_model_config

SHARDED_DIR = "sharded"
"""Folder of a checkpoint holding the sharded model and optimizer state (not named 'optimizer*': the HF
Trainer takes any such folder for its own optimizer file)."""

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def world_size() -> int:
    """Processes of this launch (torchrun and accelerate launch set WORLD_SIZE; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


@dataclass
class ShardPlan:
    """How this process shards the model (None of it applies to a single process)."""

    compute: str
    """bf16 / fp16 / fp32: dtype the gathered weights compute in."""
    cpu_offload: bool = False
    reshard_after_forward: bool = True

    @property
    def loads_weights(self) -> bool:
        """Whether this process reads the checkpoint (the first rank) or builds on the meta device."""
        return rank() == 0


def shard_plan(cfg, compute: str) -> ShardPlan | None:
    """The plan for this run: FSDP asked for and more than one process, else None (DDP or one process)."""
    fsdp = cfg.training.fsdp
    if not fsdp.enabled or world_size() < 2:
        return None
    return ShardPlan(compute, fsdp.cpu_offload, fsdp.reshard_after_forward)


def meta_model(path: str, dtype: str | torch.dtype | None, vocab_size: int | None):
    """The base model's modules with no storage (meta device): what the ranks that do not load build."""
    if path in SHAPES:
        return load_model(path, dtype=dtype, device="meta", vocab_size=vocab_size)
    _, config = read_model_config(Path(path))
    model = empty_model(config)
    if dtype is not None:
        model.to(_DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype)
    model.name_or_path = str(path)  # as load_model records it (PEFT writes it into adapter_config.json)
    model.eval()
    return model


def _policies(plan: ShardPlan) -> dict:
    kwargs: dict = {"reshard_after_forward": plan.reshard_after_forward}
    if plan.compute in ("bf16", "fp16"):
        # Gathered weights compute in half precision; gradients are reduced in fp32 for exact averaging.
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=_DTYPES[plan.compute], reduce_dtype=torch.float32)
    if plan.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    return kwargs


def shard(model: torch.nn.Module, plan: ShardPlan, device: str | torch.device) -> torch.nn.Module:
    """``fully_shard`` each decoder layer, then the root; fill the meta ranks from the first rank's weights."""
    full_state = model.state_dict() if plan.loads_weights else {}  # references, not copies
    kwargs = _policies(plan)
    for layer in find_glm(model).model.layers:
        fully_shard(layer, **kwargs)
    kwargs.pop("reshard_after_forward")  # the root keeps its weights between forward and backward (FSDP2's default)
    fully_shard(model, **kwargs)
    if not plan.loads_weights:
        model.to_empty(device="cpu" if plan.cpu_offload else device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=plan.cpu_offload)
    set_model_state_dict(model, full_state, options=options)
    del full_state
    for buffer in model.buffers():  # rotary inv_freq, the prefix's token ids: never in a state dict
        dist.broadcast(buffer, src=0)
    mark_presharded(model)
    return model


def mark_presharded(model: torch.nn.Module) -> None:
    """Set the flag the HF Trainer reads for a model sharded before it sees it: no DDP wrap, no ``.to(device)``."""
    if isinstance(getattr(type(model), "is_distributed_loading_by_transformers", None), property):
        # A PreTrainedModel (full fine-tuning) exposes it read-only, backed by this attribute (transformers'
        # distributed/mixin.py); PEFT's and P-Tuning's wrappers are plain modules the Trainer reads it from.
        model._is_distributed_loading_by_transformers = True
    else:
        model.is_distributed_loading_by_transformers = True


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def local_bytes(model: torch.nn.Module, optimizer=None) -> int:
    """Bytes this process holds for the model's parameters (its shards) and, if given, the optimizer state."""
    def size(t):
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    total = sum(size(p) for p in model.parameters())
    if optimizer is not None:
        total += sum(size(v) for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))
    return total


_TRAINED = StateDictOptions(ignore_frozen_params=True)


def save_sharded(model, optimizer, folder: Path) -> None:
    """Every rank writes its shards of the trained parameters and optimizer state into ``folder/sharded``."""
    state = {"model": get_model_state_dict(model, options=_TRAINED),
             "optimizer": get_optimizer_state_dict(model, optimizer, options=_TRAINED)}
    dcp.save(state, checkpoint_id=str(folder / SHARDED_DIR))


def load_sharded_model(model, folder: Path) -> None:
    state = {"model": get_model_state_dict(model, options=_TRAINED)}
    dcp.load(state, checkpoint_id=str(folder / SHARDED_DIR))
    set_model_state_dict(model, state["model"], options=StateDictOptions(ignore_frozen_params=True, strict=False))


def load_sharded_optimizer(model, optimizer, folder: Path) -> None:
    state = {"optimizer": get_optimizer_state_dict(model, optimizer, options=_TRAINED)}
    dcp.load(state, checkpoint_id=str(folder / SHARDED_DIR))
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=_TRAINED)


def has_sharded_state(folder: str | os.PathLike) -> bool:
    return (Path(folder) / SHARDED_DIR).is_dir()


def gather_trained(model) -> dict:
    """The trained parameters whole, on the first rank's CPU (other ranks: empty). Every rank must call it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return get_model_state_dict(model, options=options)


def unsharded_copy(skeleton: torch.nn.Module, trained: dict) -> torch.nn.Module:
    """A meta-device prepared model with the gathered trained tensors put in (frozen weights stay meta).

    Only for saving: every method writes its trained tensors only (a full fine-tune trains all of them).
    """
    skeleton.load_state_dict(trained, strict=False, assign=True)
    return skeleton
