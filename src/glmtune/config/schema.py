"""The typed training configuration: model, data, method, training, evaluation, output.

Every field has a docstring (shown by ``glmtune train --help-config``); checks
that involve several fields live in ``__post_init__``, so an invalid config
fails while it is parsed, before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from ..data.config import DataConfig
from ..methods.options import FreezeOptions, FullOptions, LoraOptions, PrefixOptions
from .parse import ConfigError

METHODS = ("lora", "ptuning", "freeze", "full")
# Method name -> the MethodConfig field that holds its options (plain registry).
METHOD_SECTIONS = {"lora": "lora", "ptuning": "ptuning", "freeze": "freeze", "full": "full"}
METHOD_ALIASES = {"p-tuning": "ptuning", "ptuning_v2": "ptuning", "prefix": "ptuning", "sft": "full"}
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay",
)


@dataclass
class ModelConfig:
    """Which model to fine-tune, and where it runs."""

    path: str = ""
    """A ChatGLM3 or native GLM model folder, or a named shape (e.g. ``tiny``) for random weights."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Storage dtype of the frozen weights: auto = the checkpoint's on GPU, fp32 on CPU."""
    device: str = "auto"
    """``auto`` (GPU when available), ``cpu``, ``cuda``, ``cuda:1``, ``mps``..."""
    tokenizer: str = ""
    """Tokenizer folder or ``tokenizer.model``; empty = the model folder."""

    def __post_init__(self):
        if not self.path:
            raise ConfigError("model.path is required: a model folder or a shape name such as 'tiny'")


@dataclass
class MethodConfig:
    """What is trained; only the section of the chosen method may be set."""

    name: str = "lora"
    """One of lora, ptuning, freeze, full."""
    lora: LoraOptions = field(default_factory=LoraOptions)
    """LoRA options (rank, alpha, dropout, targets, rsLoRA, DoRA)."""
    ptuning: PrefixOptions = field(default_factory=PrefixOptions)
    """P-Tuning v2 options (num_virtual_tokens / pre_seq_len, prefix_projection)."""
    freeze: FreezeOptions = field(default_factory=FreezeOptions)
    """Freeze options (train the last N layers, or modules matched by name)."""
    full: FullOptions = field(default_factory=FullOptions)
    """Full fine-tuning options."""

    def __post_init__(self):
        self.name = METHOD_ALIASES.get(self.name, self.name)
        if self.name not in METHOD_SECTIONS:
            raise ConfigError(f"method.name {self.name!r} is unknown; known methods: {', '.join(METHODS)}")
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


@dataclass
class TrainingConfig:
    """The optimisation loop (Hugging Face Trainer underneath)."""

    learning_rate: float = 2e-4
    """Peak learning rate."""
    lr_scheduler: str = "cosine"
    """Schedule after warmup: linear, cosine, constant, constant_with_warmup, polynomial, ..."""
    warmup_steps: int = 0
    """Linear warmup steps (exclusive with warmup_ratio)."""
    warmup_ratio: float = 0.0
    """Warmup as a fraction of all steps (exclusive with warmup_steps)."""
    num_epochs: float = 3.0
    """Passes over the training set (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Optimizer steps to run; > 0 overrides num_epochs."""
    batch_size: int = 4
    """Sequences (or packed rows) per device per forward pass."""
    gradient_accumulation_steps: int = 1
    """Forward passes per optimizer step; the loss is normalised over all their target tokens."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: much less memory, ~30% slower."""
    seed: int = 42
    """Seed for initialisation of trained weights, dropout and data order."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Compute precision: auto = bf16 where supported, fp16 autocast on fp16-only GPUs, fp32 on CPU."""
    optim: str = "adamw_torch"
    """Any Hugging Face optimizer name (adamw_torch, adamw_8bit, adafactor, ...)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables clipping)."""
    logging_steps: int = 10
    """Log loss, learning rate and tokens/s every N steps."""
    save_steps: int = 500
    """Write a checkpoint every N steps (0 = only the final result)."""
    save_total_limit: int | None = 3
    """Keep only the newest K checkpoints (null keeps all)."""
    resume: bool | int | str | None = None
    """Resume: ``auto``/``yes``/``latest`` (newest checkpoint), a step number, or a checkpoint folder."""
    resume_allow_changes: bool = False
    """Resume even though training options differ from the run's config.yaml (recorded beside it as
    config-resume-STEP.yaml); without it such a resume is refused, listing the differences."""
    dataloader_num_workers: int = 0
    """Worker processes that build batches (0 = in the training process)."""
    deepspeed: str | None = None
    """DeepSpeed JSON config path (relative: to the config file's folder; on the command line: to the working
    directory). ZeRO-3 partitions the weights only once DeepSpeed starts: each rank first loads the whole
    model into CPU memory (glmtune does not build it partitioned)."""
    tensorboard: bool = True
    """Write TensorBoard logs under OUTPUT/runs when tensorboard is installed."""
    extra_args: dict = field(default_factory=dict)
    """Other ``transformers.TrainingArguments`` fields, passed through (checked by name against that class,
    not ``Seq2SeqTrainingArguments``: its generation fields would fail only after the model load)."""

    def __post_init__(self):
        _positive(self, ("learning_rate", "batch_size", "gradient_accumulation_steps", "logging_steps"))
        _non_negative(self, ("warmup_steps", "warmup_ratio", "weight_decay", "max_grad_norm", "save_steps",
                             "dataloader_num_workers"))
        if self.lr_scheduler not in SCHEDULERS:
            from .parse import closest

            raise ConfigError(f"training.lr_scheduler {self.lr_scheduler!r} is unknown; "
                              f"{closest(self.lr_scheduler, list(SCHEDULERS))}choose one of {', '.join(SCHEDULERS)}")
        if self.warmup_steps and self.warmup_ratio:
            raise ConfigError("set training.warmup_steps or training.warmup_ratio, not both")
        if self.warmup_ratio >= 1:
            raise ConfigError(f"training.warmup_ratio must be below 1 (a fraction of all steps), got {self.warmup_ratio}")
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
        _check_extra_args(self.extra_args)


@dataclass
class EvaluationConfig:
    """Evaluation during and after training."""

    strategy: Literal["no", "steps", "epoch"] = "steps"
    """When to evaluate on the validation set: every ``steps``, every epoch, or never."""
    steps: int = 500
    """Evaluate every N optimizer steps (strategy ``steps``)."""
    batch_size: int | None = None
    """Batch size for eval loss and generation (default: training.batch_size)."""
    max_eval_samples: int | None = None
    """Bound on validation records used for eval loss (null = all)."""
    generate: bool = True
    """Also generate answers and score ROUGE-1/2/L and BLEU-4 (as the official demo)."""
    max_samples: int = 50
    """Validation records to generate for at each evaluation (the official demo uses 50)."""
    max_test_samples: int | None = 500
    """Test records to generate for after training (null = all of them)."""
    max_new_tokens: int = 512
    """Token limit of each generated answer."""

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

    dir: str = "output"
    """Run folder (see :mod:`glmtune.train.layout` for what it holds)."""
    if_exists: Literal["refuse", "resume", "overwrite"] = "refuse"
    """An existing run in ``dir``: refuse (default), resume from its newest checkpoint, or delete it."""
    plots: bool = True
    """Draw loss.png / eval_loss.png at the end of training."""


@dataclass
class TrainConfig:
    """A complete training run."""

    model: ModelConfig
    """The base model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data files, format and lengths (see :class:`glmtune.data.DataConfig`)."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """What to train."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """The optimisation loop."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """Evaluation during and after training."""
    output: OutputConfig = field(default_factory=OutputConfig)
    """Output folder."""

    def __post_init__(self):
        if self.training.resume is not None and self.output.if_exists == "overwrite":
            raise ConfigError("training.resume and output.if_exists=overwrite contradict each other; drop one")
        if self.training.deepspeed and deepspeed_stage(self.training.deepspeed) == 3:
            # Refused, not half-supported: the model is built whole on every rank (no zero.Init), and the
            # methods save, resume and evaluate from in-memory parameters that ZeRO-3 would leave as empty
            # partitions (an adapter of empty tensors); P-Tuning's prefix would not even be gathered.
            raise ConfigError(
                f"training.deepspeed {self.training.deepspeed}: DeepSpeed ZeRO-3 (zero_optimization.stage 3) is "
                "not supported: glmtune loads the whole model on every GPU and saves from unpartitioned weights. "
                "Use a stage 2 config (ds_zero_2.json: optimizer state and gradients sharded)"
            )


def deepspeed_stage(path: str) -> int:
    """``zero_optimization.stage`` of a DeepSpeed JSON config (0 when it has none)."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ConfigError(f"training.deepspeed {path}: cannot read the DeepSpeed config ({exc.strerror}); "
                          "fix the path (relative paths: the config file's folder, or the working "
                          "directory for command-line overrides)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"training.deepspeed {path}: not valid JSON ({exc})") from None
    zero = data.get("zero_optimization", {}) if isinstance(data, dict) else None
    stage = zero.get("stage", 0) if isinstance(zero, dict) else None
    if not isinstance(stage, int) or isinstance(stage, bool):
        raise ConfigError(f"training.deepspeed {path}: zero_optimization.stage must be 0, 1, 2 or 3, "
                          f"got {stage!r}")
    return stage


def _positive(obj, names) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{_section(obj)}.{name} must be > 0, got {getattr(obj, name)}")


def _non_negative(obj, names) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ConfigError(f"{_section(obj)}.{name} must be >= 0, got {getattr(obj, name)}")


def _section(obj) -> str:
    return {"TrainingConfig": "training", "EvaluationConfig": "evaluation"}.get(type(obj).__name__, "config")


def extra_args_fields() -> list[str]:
    """What ``training.extra_args`` may set: ``transformers.TrainingArguments`` fields (the class we build)."""
    from transformers import TrainingArguments

    return [f.name for f in fields(TrainingArguments) if f.init]


def _check_extra_args(extra: dict) -> None:
    if not extra:
        return
    from .official import TRAINING_ARGS_MAP
    from .parse import closest

    known = extra_args_fields()
    for key in ("fsdp", "fsdp_config"):
        if extra.get(key):
            # Methods save and evaluate from in-memory parameters, which FSDP shards: refused, not half-supported.
            raise ConfigError(f"training.extra_args.{key}: FSDP is not supported yet; use torchrun (DDP) or "
                              "DeepSpeed ZeRO-2 (training.deepspeed)")
    for key in extra:
        if key in TRAINING_ARGS_MAP:
            raise ConfigError(f"training.extra_args.{key} is a glmtune option: set {TRAINING_ARGS_MAP[key]} instead")
        if key not in known:
            raise ConfigError(f"training.extra_args.{key} is not a transformers TrainingArguments field; "
                              f"{closest(key, known)}see `transformers.TrainingArguments`")
