"""The typed training configuration: model, data, method, training, evaluation, output.

Every field has a docstring (shown by ``glmtune train --help-config``); checks
that involve several fields live in ``__post_init__``, so an invalid config
fails while it is parsed, before any model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Literal

from ..data.config import DataConfig
from ..methods.catalog import ALIASES, METHODS as _REGISTRY
from .official import check_extra_args
from ..errors import closest
from .parse import ConfigError

# All derived from the method registry (glmtune.methods.catalog): names, config sections, aliases.
METHODS = tuple(_REGISTRY)
METHOD_SECTIONS = {name: method.section for name, method in _REGISTRY.items()}
METHOD_ALIASES = dict(ALIASES)
# Methods that keep the base model frozen: the only ones a quantized base (model.quantization) can serve.
QUANTIZABLE_METHODS = ("lora", "ptuning")
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay",
)


@dataclass
class QuantizationConfig:
    """QLoRA: the frozen base model's linear layers quantized by bitsandbytes (``pip install 'glmtune[qlora]'``).

    Only for methods that keep the base frozen (lora, ptuning); embeddings and the output layer stay
    unquantized and the trained weights stay float32, so the result is an ordinary adapter for the
    full-precision base.
    """

    bits: int | None = field(
        default=None, metadata={"help": (
            "4 or 8 (bitsandbytes NF4/FP4 or LLM.int8() layers); null = no quantization."
        )})
    type: Literal["nf4", "fp4"] = field(
        default="nf4", metadata={"help": "4-bit data type: nf4 (QLoRA's, best for normal weights) or fp4."})
    double_quant: bool = field(
        default=True, metadata={"help": "4-bit: quantize the quantization constants too (~0.4 bit/weight less)."})
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = field(
        default="auto", metadata={"help": (
            "dtype 4-bit layers compute in: auto = the run's compute precision (bf16/fp16 on GPU, fp32 on CPU)."
        )})

    def __post_init__(self):
        if self.bits is not None and self.bits not in (4, 8):
            raise ConfigError(f"model.quantization.bits must be 4, 8 or null, got {self.bits!r}",
                              key="model.quantization.bits")


@dataclass
class ModelConfig:
    """Which model to fine-tune, and where it runs."""

    path: str = field(
        default="", metadata={"help": (
            'A ChatGLM3 or native GLM model folder, or a named shape (e.g. ``tiny``) for random '
            'weights.'
        )})
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = field(
        default="auto", metadata={"help": (
            "Storage dtype of the frozen weights: auto = the checkpoint's on GPU, fp32 on CPU."
        )})
    device: str = field(
        default="auto", metadata={"help": (
            '``auto`` (GPU when available), ``cpu``, ``cuda``, ``cuda:1``, ``mps``...'
        )})
    tokenizer: str = field(
        default="", metadata={"help": (
            'Tokenizer folder or ``tokenizer.model``; empty = the model folder.'
        )})
    family: str = field(
        default="", metadata={"help": (
            'Model family: chatglm2, chatglm3, glm4, glm4-0414; empty = detected from the model folder\'s '
            'config.json and tokenizer_config.json (set it when they do not tell, e.g. a renamed ChatGLM2 folder).'
        )})
    quantization: QuantizationConfig = field(
        default_factory=QuantizationConfig, metadata={"help": (
            'QLoRA: load the frozen base quantized to 4 or 8 bits (lora and ptuning only).'
        )})

    def __post_init__(self):
        if not self.path:
            raise ConfigError("model.path is required: a model folder or a shape name such as 'tiny'")


class _MethodConfigBase:
    """What is trained; only the section of the chosen method may be set."""

    def __post_init__(self):
        self.name = METHOD_ALIASES.get(self.name, self.name)
        if self.name not in METHOD_SECTIONS:
            raise ConfigError(f"method.name {self.name!r} is unknown; {closest(self.name, list(METHODS))}"
                              f"known methods: {', '.join(METHODS)}")
        for method, section in METHOD_SECTIONS.items():
            value = getattr(self, section)
            if method != self.name and value != type(value)():
                raise ConfigError(
                    f"method.{section} is set but method.name is {self.name!r}; "
                    f"remove the method.{section} section or set method.name={method}"
                )

    @property
    def options(self):
        """The options dataclass of the chosen method."""
        return getattr(self, METHOD_SECTIONS[self.name])


# ``name`` plus one options section per registered method (method.lora, method.ptuning, ...).
MethodConfig = make_dataclass(
    "MethodConfig",
    [("name", str, field(default="lora", metadata={"help": f"One of {', '.join(METHODS)}."}))]
    + [(m.section, m.options_type, field(default_factory=m.options_type, metadata={"help": m.help}))
       for m in _REGISTRY.values()],
    bases=(_MethodConfigBase,),
    namespace={"__doc__": _MethodConfigBase.__doc__, "__module__": __name__},
)


@dataclass
class FsdpConfig:
    """PyTorch FSDP2 (``fully_shard``) when launched with several processes (torchrun, accelerate launch).

    Each decoder layer is one shard unit; the first rank loads the weights and the others receive
    their shards from it (no other rank holds the whole model); checkpoints are sharded (torch
    distributed checkpoint) and the final result is saved whole by the first rank. Mixed precision
    follows ``training.precision``, activation checkpointing ``training.gradient_checkpointing``.
    A single process trains unsharded with the same config.
    """

    enabled: bool = field(
        default=False, metadata={"help": (
            "Shard weights, gradients and optimizer state across the processes (FSDP2); off = DDP, each "
            "process holds the whole model."
        )})
    cpu_offload: bool = field(
        default=False, metadata={"help": (
            "Keep the sharded weights, gradients and optimizer state in CPU memory (GPU memory for one "
            "layer at a time; slower)."
        )})
    reshard_after_forward: bool = field(
        default=True, metadata={"help": (
            "Free each layer's gathered weights after its forward (gathered again for backward): less "
            "memory; false keeps them until backward (less communication)."
        )})


@dataclass
class TrainingConfig:
    """The optimisation loop (Hugging Face Trainer underneath)."""

    learning_rate: float = field(default=2e-4, metadata={"help": 'Peak learning rate.'})
    lr_scheduler: str = field(
        default="cosine", metadata={"help": (
            'Schedule after warmup: linear, cosine, constant, constant_with_warmup, polynomial, ...'
        )})
    warmup_steps: int = field(default=0, metadata={"help": 'Linear warmup steps (exclusive with warmup_ratio).'})
    warmup_ratio: float = field(
        default=0.0, metadata={"help": (
            'Warmup as a fraction of all steps (exclusive with warmup_steps).'
        )})
    num_epochs: float = field(
        default=3.0, metadata={"help": (
            'Passes over the training set (ignored when max_steps > 0).'
        )})
    max_steps: int = field(default=-1, metadata={"help": 'Optimizer steps to run; > 0 overrides num_epochs.'})
    batch_size: int = field(
        default=4, metadata={"help": (
            'Sequences (or packed rows) per device per forward pass.'
        )})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": (
            'Forward passes per optimizer step; the loss is normalised over all their target tokens.'
        )})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": (
            'Recompute activations in backward: much less memory, ~30% slower.'
        )})
    checkpoint_every_n_layers: int = field(
        default=1, metadata={"help": (
            "With gradient_checkpointing: checkpoint only every N-th decoder layer (1 = all, as the official "
            "demo); the others keep their activations, so less is recomputed (faster) for more memory "
            "(`glmtune plan` shows how much)."
        )})
    checkpoint_keep_attention: bool | None = field(
        default=None, metadata={"help": (
            "With gradient_checkpointing: keep each layer's attention output (hidden size values per token) so the "
            "recompute skips the attention kernel. Exact either way. null = on for CPU runs (the kernel is slow "
            "there, memory plentiful), off on GPUs (flash attention is cheap; for ChatGLM3-6B at the official "
            "defaults it would cost 0.66 GiB)."
        )})
    offload_activations: bool = field(
        default=False, metadata={"help": (
            "Keep the activations saved for backward in CPU memory (torch's save_on_cpu) instead of on the GPU: "
            "less GPU memory for long sequences, slower; with gradient_checkpointing only each layer's input moves."
        )})
    seed: int = field(
        default=42, metadata={"help": (
            'Seed for initialisation of trained weights, dropout and data order.'
        )})
    precision: Literal["auto", "bf16", "fp16", "fp32"] = field(
        default="auto", metadata={"help": (
            'Compute precision: auto = bf16 where supported, fp16 autocast on fp16-only GPUs, fp32 on'
            ' CPU.'
        )})
    optim: str = field(
        default="adamw_torch", metadata={"help": (
            'Any Hugging Face optimizer name: adamw_torch, adafactor, and with bitsandbytes adamw_bnb_8bit '
            '(8-bit AdamW state: 2 instead of 8 bytes per trained weight) or paged_adamw_8bit / paged_adamw_32bit '
            '(state paged out to CPU under GPU memory pressure).'
        )})
    loss_guard: bool = field(
        default=True, metadata={"help": (
            'Stop with the cause and the fix when the logged training loss is not finite or exactly 0 (a '
            'collapsed fp16 run, an empty label mask) instead of training on silently.'
        )})
    weight_decay: float = field(default=0.0, metadata={"help": 'AdamW weight decay.'})
    adam_beta1: float = field(default=0.9, metadata={"help": 'AdamW beta1.'})
    adam_beta2: float = field(default=0.999, metadata={"help": 'AdamW beta2.'})
    adam_epsilon: float = field(default=1e-8, metadata={"help": 'AdamW epsilon.'})
    max_grad_norm: float = field(default=1.0, metadata={"help": 'Gradient clipping norm (0 disables clipping).'})
    logging_steps: int = field(
        default=10, metadata={"help": (
            'Log loss, learning rate and tokens/s every N steps.'
        )})
    save_steps: int = field(
        default=500, metadata={"help": (
            'Write a checkpoint every N steps (0 = only the final result).'
        )})
    save_total_limit: int | None = field(
        default=3, metadata={"help": (
            'Keep only the newest K checkpoints (null keeps all).'
        )})
    resume: bool | int | str | None = field(
        default=None, metadata={"help": (
            'Resume: ``auto``/``yes``/``latest`` (newest checkpoint), a step number, or a checkpoint '
            'folder.'
        )})
    resume_allow_changes: bool = field(
        default=False, metadata={"help": (
            "Resume even though training options differ from the run's config.yaml (recorded beside "
            'it as config-resume-STEP.yaml); without it such a resume is refused, listing the '
            'differences.'
        )})
    dataloader_num_workers: int = field(
        default=0, metadata={"help": (
            'Worker processes that build batches (0 = in the training process).'
        )})
    deepspeed: str | None = field(
        default=None, metadata={"help": (
            "DeepSpeed JSON config path (relative: to the config file's folder; on the command line: "
            'to the working directory), e.g. the official ds_zero_2.json / ds_zero_3.json unchanged. Under '
            "ZeRO-3 the model is built partitioned (deepspeed.zero.Init): no process holds it whole. Needs "
            "pip install 'glmtune[deepspeed]'."
        )})
    fsdp: FsdpConfig = field(
        default_factory=FsdpConfig, metadata={"help": "FSDP2 sharding across processes (see FsdpConfig)."})
    tensorboard: bool | None = field(
        default=None, metadata={"help": (
            "TensorBoard logs under OUTPUT/runs. null (default): when tensorboard is installed, else "
            "the run says once that they are off; true: required (the run is refused without "
            "tensorboard); false: off."
        )})
    report_to: list[str] = field(
        default_factory=list, metadata={"help": (
            "Other Trainer logging integrations (wandb, mlflow, comet_ml, ...; \"all\" = every installed "
            "one). Each must be installed: a missing one refuses the run before the model loads."
        )})
    extra_args: dict = field(
        default_factory=dict, metadata={"help": (
            'Other ``transformers.TrainingArguments`` fields, passed through (checked by name against'
            ' that class, not ``Seq2SeqTrainingArguments``: its generation fields would fail only '
            'after the model load).'
        )})

    def __post_init__(self):
        _positive(self, ("learning_rate", "batch_size", "gradient_accumulation_steps", "logging_steps",
                         "checkpoint_every_n_layers"))
        _non_negative(self, ("warmup_steps", "warmup_ratio", "weight_decay", "max_grad_norm", "save_steps",
                             "dataloader_num_workers", "adam_beta1", "adam_beta2"))
        _positive(self, ("adam_epsilon",))
        for name in ("adam_beta1", "adam_beta2"):
            if getattr(self, name) >= 1:
                raise ConfigError(f"training.{name} must be in [0, 1), got {getattr(self, name)}",
                                  key=f"training.{name}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"training.seed must be in [0, 2**32), got {self.seed}", key="training.seed")
        if self.lr_scheduler not in SCHEDULERS:
            raise ConfigError(f"training.lr_scheduler {self.lr_scheduler!r} is unknown; "
                              f"{closest(self.lr_scheduler, list(SCHEDULERS))}choose one of {', '.join(SCHEDULERS)}")
        if self.warmup_steps and self.warmup_ratio:
            raise ConfigError("set training.warmup_steps or training.warmup_ratio, not both")
        if self.warmup_ratio >= 1:
            raise ConfigError(f"training.warmup_ratio must be below 1 (a fraction of all steps), got {self.warmup_ratio}",
                              key="training.warmup_ratio")
        if self.max_steps <= 0 and self.num_epochs <= 0:
            raise ConfigError("set training.max_steps > 0 or training.num_epochs > 0; neither would train anything")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ConfigError("training.save_total_limit must be >= 1, or null to keep every checkpoint")
        if isinstance(self.resume, bool):  # YAML reads a bare yes/no as a boolean
            self.resume = "yes" if self.resume else None
        if self.resume is not None:
            self.resume = str(self.resume)
            if self.resume.lower() in ("", "no", "false", "none"):
                self.resume = None
        self.report_to = [name for name in self.report_to if name != "none"]
        check_extra_args(self.extra_args)


@dataclass
class EvaluationConfig:
    """Evaluation during and after training."""

    strategy: Literal["no", "steps", "epoch"] = field(
        default="steps", metadata={"help": (
            'When to evaluate on the validation set: every ``steps``, every epoch, or never.'
        )})
    steps: int = field(default=500, metadata={"help": 'Evaluate every N optimizer steps (strategy ``steps``).'})
    batch_size: int | None = field(
        default=None, metadata={"help": (
            'Batch size for eval loss and generation (default: training.batch_size).'
        )})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": (
            'Bound on validation records used for eval loss (null = all).'
        )})
    generate: bool = field(
        default=True, metadata={"help": (
            'Also generate answers and score ROUGE-1/2/L and BLEU-4 (as the official demo).'
        )})
    max_samples: int = field(
        default=50, metadata={"help": (
            'Validation records to generate for at each evaluation (the official demo uses 50).'
        )})
    max_test_samples: int | None = field(
        default=500, metadata={"help": (
            'Test records to generate for after training (null = all of them).'
        )})
    max_new_tokens: int = field(default=512, metadata={"help": 'Token limit of each generated answer.'})

    def __post_init__(self):
        _positive(self, ("steps", "max_new_tokens"))
        _non_negative(self, ("max_samples",))
        for name in ("batch_size", "max_eval_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"evaluation.{name} must be >= 1 or null, got {value}")


@dataclass
class OutputConfig:
    """Where results go, and what to do with an existing run there."""

    dir: str = field(
        default="output", metadata={"help": (
            'Run folder (see :mod:`glmtune.train.layout` for what it holds).'
        )})
    if_exists: Literal["refuse", "resume", "overwrite"] = field(
        default="refuse", metadata={"help": (
            'An existing run in ``dir``: refuse (default), resume from its newest checkpoint, or '
            'delete it.'
        )})
    plots: bool = field(default=True, metadata={"help": 'Draw loss.png: train loss (raw, smoothed), eval loss, lr.'})


@dataclass
class TrainConfig:
    """A complete training run."""

    model: ModelConfig = field(metadata={"help": 'The base model.'})
    data: DataConfig = field(
        default_factory=DataConfig, metadata={"help": (
            'Data files, format and lengths (see :class:`glmtune.data.DataConfig`).'
        )})
    method: MethodConfig = field(default_factory=MethodConfig, metadata={"help": 'What to train.'})
    training: TrainingConfig = field(default_factory=TrainingConfig, metadata={"help": 'The optimisation loop.'})
    evaluation: EvaluationConfig = field(
        default_factory=EvaluationConfig, metadata={"help": (
            'Evaluation during and after training.'
        )})
    output: OutputConfig = field(default_factory=OutputConfig, metadata={"help": 'Output folder.'})

    def __post_init__(self):
        if self.model.quantization.bits and self.method.name not in QUANTIZABLE_METHODS:
            raise ConfigError(
                f"model.quantization.bits={self.model.quantization.bits} needs a frozen base model, but method "
                f"{self.method.name!r} trains the base weights themselves (quantized weights cannot be updated); "
                f"use method.name=lora (QLoRA) or ptuning, or remove model.quantization", key="model.quantization.bits")
        check_sharding(self)
        if self.training.resume is not None and self.output.if_exists == "overwrite":
            raise ConfigError("training.resume and output.if_exists=overwrite contradict each other; drop one")


def check_sharding(cfg: TrainConfig) -> None:
    """Refuse sharding combinations that cannot work, while the config is parsed (before any model load)."""
    if cfg.training.fsdp.enabled and cfg.training.deepspeed:
        raise ConfigError("training.fsdp.enabled and training.deepspeed both shard the model; choose one "
                          "(remove training.deepspeed, or set training.fsdp.enabled=false)", key="training.fsdp.enabled")
    if cfg.training.fsdp.enabled and cfg.model.quantization.bits:
        # bitsandbytes' quantized weights are not DTensor-shardable by fully_shard (no quant_storage path here).
        raise ConfigError("model.quantization (QLoRA) cannot be combined with training.fsdp.enabled: quantized "
                          "layers are not sharded by FSDP2; drop training.fsdp (each process then holds the "
                          "quantized base, DDP) or train without quantization", key="training.fsdp.enabled")


def keeps_attention(training: TrainingConfig, device: str) -> bool:
    """``training.checkpoint_keep_attention`` resolved: null = on for CPU runs, off on accelerators."""
    setting = training.checkpoint_keep_attention
    return device == "cpu" if setting is None else setting


def check_deepspeed(path: str | None) -> None:
    """Read a DeepSpeed config when files are checked, and again before training: it must be JSON with a ZeRO
    stage 0-3 (the runs themselves are checked in glmtune.train.deepspeed, before the model loads)."""
    if path:
        deepspeed_stage(path)


def read_deepspeed_config(path: str) -> dict:
    """A DeepSpeed JSON config, or one ConfigError naming the file and the fix."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise ConfigError(f"training.deepspeed {path}: cannot read the DeepSpeed config ({exc.strerror}); "
                          "fix the path (relative paths: the config file's folder, or the working "
                          "directory for command-line overrides)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"training.deepspeed {path}: not valid JSON ({exc})") from None


def deepspeed_stage(path: str, data=None) -> int:
    """``zero_optimization.stage`` of a DeepSpeed JSON config (0 when it has none); ``data``: the file, already read."""
    if data is None:
        data = read_deepspeed_config(path)
    zero = data.get("zero_optimization", {}) if isinstance(data, dict) else None
    stage = zero.get("stage", 0) if isinstance(zero, dict) else None
    if not isinstance(stage, int) or isinstance(stage, bool):
        raise ConfigError(f"training.deepspeed {path}: zero_optimization.stage must be 0, 1, 2 or 3, "
                          f"got {stage!r}")
    return stage


def _positive(obj, names) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{_section(obj)}.{name} must be > 0, got {getattr(obj, name)}",
                              key=f"{_section(obj)}.{name}")


def _non_negative(obj, names) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ConfigError(f"{_section(obj)}.{name} must be >= 0, got {getattr(obj, name)}",
                              key=f"{_section(obj)}.{name}")


def _section(obj) -> str:
    return {"TrainingConfig": "training", "EvaluationConfig": "evaluation"}.get(type(obj).__name__, "config")
