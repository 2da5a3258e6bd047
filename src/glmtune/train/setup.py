"""Turning a :class:`TrainConfig` into the pieces of a run: device, precision, TrainingArguments."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
from transformers import TrainingArguments
from transformers.integrations import integration_utils

from ..config import ConfigError, TrainConfig, check_deepspeed
from ..config.parse import unknown_key
from ..devices import DeviceError, resolve_device as resolve
from .deepspeed import check_deepspeed_run
from .distributed import world_size


@dataclass
class Precision:
    """Where and how the run computes."""

    device: str
    """cpu, cuda, cuda:N, mps, ..."""
    compute: str
    """bf16 / fp16 (autocast; fp16 with loss scaling) or fp32."""
    storage: str
    """dtype the frozen weights are loaded in."""


def resolve_device(device: str) -> str:
    """The device of this process (:func:`glmtune.devices.resolve_device`), errors as config errors."""
    try:
        return resolve(device)
    except DeviceError as exc:
        raise ConfigError(f"model.device: {exc}") from None


def weights_device(precision: Precision, args) -> str:
    """Where the model is loaded: the device the Trainer will run this process on (``args.device``).

    The Trainer moves the model to ``args.device`` anyway; loading it there
    directly avoids a second copy, and catches a ``model.device`` it would not honour.
    """
    if not precision.device.startswith("cuda"):
        return precision.device
    wanted = torch.device(precision.device)
    if wanted.index is not None and wanted != args.device:
        raise ConfigError(f"model.device={precision.device}, but this process trains on {args.device} (the "
                          "Trainer's device); to pick a GPU, set CUDA_VISIBLE_DEVICES and use model.device=cuda")
    return str(args.device)


def resolve_precision(cfg: TrainConfig) -> Precision:
    """bf16 where supported, fp16 (+ fp32 trainable weights, loss scaling) on fp16-only GPUs, fp32 on CPU."""
    device = resolve_device(cfg.model.device)
    on_gpu = device.startswith("cuda")
    compute = cfg.training.precision
    if compute == "auto":
        if not on_gpu:
            compute = "fp32"
        else:
            compute = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if compute in ("bf16", "fp16") and not on_gpu:
        raise ConfigError(f"training.precision={compute} needs a GPU; this run is on {device} (use fp32 or auto)")
    if compute == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("training.precision=bf16 but this GPU has no bf16 support; use fp16 or auto")
    storage = cfg.model.dtype
    if storage == "auto":
        storage = compute
    return Precision(device=device, compute=compute, storage=storage)


def cast_trainable_to_fp32(model: torch.nn.Module) -> None:
    """Trainable weights in fp32: AdamW updates vanish in half precision, and fp16 loss scaling needs it."""
    for param in model.parameters():
        # ZeRO-3 partitions (ds_id) are cast by DeepSpeed, which keeps fp32 master weights of trained ones itself.
        if param.requires_grad and param.dtype != torch.float32 and not hasattr(param, "ds_id"):
            param.data = param.data.float()


TENSORBOARD_OFF = ("TensorBoard logs are off: tensorboard is not installed (`pip install tensorboard` to get "
                   "them in OUTPUT/runs; training.tensorboard=false silences this note)")


def reporting(cfg: TrainConfig) -> tuple[list[str], str | None]:
    """(Trainer ``report_to`` list, a note for the user or None); a requested integration that is missing fails.

    ``training.tensorboard`` null means "when installed" (the note says when it is not); true and every
    ``training.report_to`` name are requests, refused before the model loads when they cannot be honoured.
    """
    t = cfg.training
    available = integration_utils.get_available_reporting_integrations()  # looked up per call: what is installed now
    wanted = [name for name in t.report_to if name != "all"]
    for name in wanted:
        if name not in integration_utils.INTEGRATION_TO_CALLBACK:
            raise unknown_key("training.report_to", name, sorted(integration_utils.INTEGRATION_TO_CALLBACK),
                              "logging integration")
    if "all" in t.report_to:
        wanted += [name for name in available if name not in wanted and name != "tensorboard"]
    note = None
    if t.tensorboard or (t.tensorboard is None and "tensorboard" in available):
        wanted.append("tensorboard")
    elif t.tensorboard is None:
        note = TENSORBOARD_OFF
    missing = [name for name in wanted if name not in available]
    if missing:
        option = "training.tensorboard=true" if missing == ["tensorboard"] and t.tensorboard else "training.report_to"
        raise ConfigError(f"{option} asks for {', '.join(missing)}, but {'it is' if len(missing) == 1 else 'they are'}"
                          f" not installed: `pip install {' '.join(missing)}`, or remove {'it' if len(missing) == 1 else 'them'}"
                          f" from {option.split('=')[0]}", key=option.split("=")[0])
    return list(dict.fromkeys(wanted)), note


def training_arguments(cfg: TrainConfig, precision: Precision, output_dir: str, has_eval: bool):
    """``TrainingArguments`` for the run (the Trainer's own argument object).

    Built before the model is loaded: it checks the options against
    transformers, and sets up the process group under torchrun, so that the
    run knows each process's device and which process writes files.
    """
    t, e = cfg.training, cfg.evaluation
    check_deepspeed(t.deepspeed)  # also when the config did not come from a checked file
    if t.deepspeed and importlib.util.find_spec("deepspeed") is None:  # transformers' own error names no fix
        raise ConfigError(f"training.deepspeed {t.deepspeed}: DeepSpeed is not installed; `pip install "
                          "'glmtune[deepspeed]'` (without CUDA: DS_BUILD_OPS=0), or remove training.deepspeed (torchrun "
                          "then trains with DDP, or FSDP2 with training.fsdp.enabled=true)", key="training.deepspeed")
    check_deepspeed_run(cfg)  # QLoRA + ZeRO-3, an optimizer op that cannot build: refused before the model loads
    strategy = e.strategy if has_eval else "no"
    warmup = t.warmup_steps if t.warmup_steps else t.warmup_ratio  # transformers 5: a float < 1 is a ratio
    kwargs = dict(
        output_dir=output_dir,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=e.batch_size or t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=warmup,
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_epsilon,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        seed=t.seed,
        bf16=precision.compute == "bf16",
        fp16=precision.compute == "fp16",
        use_cpu=precision.device == "cpu",
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        eval_strategy=strategy,
        eval_steps=e.steps,
        dataloader_num_workers=t.dataloader_num_workers,
        remove_unused_columns=False,
        report_to=reporting(cfg)[0] or "none",
        disable_tqdm=True,  # our own bar shows real tokens/s
        deepspeed=t.deepspeed,
    )
    if t.fsdp.enabled and world_size() > 1:
        # The model reaches the Trainer already sharded (train/distributed.py), which transformers accepts only
        # with save_only_model; GlmTrainer then writes the sharded optimizer state, scheduler and RNG itself.
        kwargs["save_only_model"] = True
    kwargs.update(t.extra_args)
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the training options are inconsistent for transformers: {exc}") from None
