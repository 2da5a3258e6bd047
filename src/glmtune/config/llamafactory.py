"""Read LLaMA-Factory training YAMLs (``llamafactory-cli train X.yaml``) for what glmtune supports.

A LLaMA-Factory config is one flat mapping of its argument dataclasses
(``src/llamafactory/hparams``: ModelArguments, DataArguments,
FinetuningArguments, and ``Seq2SeqTrainingArguments``). It is recognised by
those keys and rewritten into glmtune's sections; :func:`convert_llamafactory`
also returns one note per key (what it became, or why it has no effect), which
``glmtune train X.yaml --print-config`` prints above the resolved config.

What a key means is what it means to LLaMA-Factory: options left out take its
defaults (LoRA alpha = 2 x rank, dropout 0, target ``all`` linear layers;
gradient checkpointing on; ``cutoff_len`` 2048; ``dataset_dir`` ``data``) and
the Hugging Face ``Seq2SeqTrainingArguments`` defaults (as for the official
demo's YAMLs). Keys glmtune cannot honour are refused together, each with its
nearest equivalent or the reason (``stage: dpo`` is one such error). Relative
paths resolve against the working directory, as ``llamafactory-cli`` does.

``template: chatglm3`` selects the official ChatGLM3 format (ids and labels of
THUDM's fine-tune demo, tools in ChatGLM3's own system prompt and
``tool_call(...)`` syntax). LLaMA-Factory's own ``chatglm3`` template renders
tools in GLM-4's format instead, so a tool-calling model trained here follows
what the official ChatGLM3 inference code parses.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .official import HF_DEFAULTS, IGNORED_TRAINING_ARGS, TRAINING_ARGS_MAP, _set, _training_args, extra_args_fields
from ..data.registry import default_registry
from .parse import ConfigError, Source, read_yaml, unknown_key

# Keys only LLaMA-Factory configs have (any one, with none of glmtune's sections, marks the format).
MARKERS = ("model_name_or_path", "stage", "finetuning_type", "template", "cutoff_len", "dataset_dir",
           "lora_target", "lora_rank")
OUR_SECTIONS = ("model", "data", "method", "training", "evaluation", "output")
FINETUNING_TYPES = {"lora": "lora", "freeze": "freeze", "full": "full"}
# key -> glmtune dotted key, copied as they are.
DIRECT = {
    "model_name_or_path": "model.path",
    "max_samples": "data.max_samples",
    "preprocessing_num_workers": "data.num_workers",
    "plot_loss": "output.plots",
    "quantization_bit": "model.quantization.bits",
    "quantization_type": "model.quantization.type",
    "double_quantization": "model.quantization.double_quant",
}
# Accepted, with no effect here (the reason is printed by --print-config).
IGNORED = {
    "do_train": "glmtune train always trains",
    "overwrite_cache": "the data cache key covers files, options and tokenizer, so a stale cache is never used",
    "overwrite_output_dir": "an existing run folder is refused; set output.if_exists=resume|overwrite to choose",
    "preprocessing_batch_size": "encoding is batched per worker",
    "trust_remote_code": "glmtune never runs code from a model folder (its own GLM modelling is used)",
    "flash_attn": "attention is PyTorch SDPA",
    "use_fast_tokenizer": "glmtune has one ChatGLM3 tokenizer",
    "print_param_status": "the trainable parameter count is printed at start",
    "low_cpu_mem_usage": "weights are loaded shard by shard",
    "ignore_pad_token_for_loss": "padding never counts in the loss",
    "freeze_trainable_modules": "used only with its default `all` (every module of the trained layers)",
    "include_num_input_tokens_seen": "tokens/s is logged",
}
# Refused: key -> (values that are fine, nearest equivalent or reason).
REFUSED = {
    "adapter_name_or_path": (None, "training on top of an existing adapter is not supported; merge it into the base "
                                   "model first (glmtune export --model BASE --adapter DIR --out MERGED), or continue a "
                                   "glmtune run with training.resume"),
    "eval_dataset": (None, "nearest: val_size (hold out part of the training data), or data.val_file in a glmtune "
                           "config"),
    "train_on_prompt": (False, "prompts are never learned, as in the official ChatGLM3 demo"),
    "mask_history": (False, "every assistant turn is learned, as in the official ChatGLM3 demo"),
    "streaming": (False, "datasets are read whole (encoding is cached)"),
    "mix_strategy": ("concat", "nearest: sampling ratios, dataset: name1,name2:0.5"),
    "interleave_probs": (None, "nearest: sampling ratios, dataset: name1,name2:0.5"),
    "tool_format": (None, "tools are rendered in the model family's own format (ChatGLM3's)"),
    "default_system": (None, "nearest: a system column in the data"),
    "tokenized_path": (None, "encoded data is cached automatically in ~/.cache/glmtune/data ($GLMTUNE_CACHE)"),
    "additional_target": (None, "nearest: method freeze with method.freeze.trainable_modules"),
    "loraplus_lr_ratio": (None, "LoRA+ is not supported"),
    "pissa_init": (False, "PiSSA is not supported"),
    "create_new_adapter": (False, "training on top of an existing adapter is not supported"),
    "use_galore": (False, "GaLore is not supported"),
    "use_apollo": (False, "APOLLO is not supported"),
    "use_badam": (False, "BAdam is not supported"),
    "use_llama_pro": (False, "LLaMA Pro is not supported"),
    "pure_bf16": (False, "nearest: training.precision=bf16 (mixed precision, trained weights in float32)"),
    "use_unsloth": (False, "unsloth kernels do not apply to glmtune's GLM model"),
    "enable_liger_kernel": (False, "Liger kernels do not apply to glmtune's GLM model"),
    "rope_scaling": (None, "RoPE scaling is not supported"),
    "shift_attn": (False, "S^2-Attn is not supported"),
    "neftune_noise_alpha": (None, "NEFTune is not supported"),
    "resize_vocab": (False, "the vocabulary is fixed by the ChatGLM3 tokenizer"),
    "new_special_tokens": (None, "the vocabulary is fixed by the ChatGLM3 tokenizer"),
}
STAGES = {"pt": "pre-training on raw text is not supported; nearest: base-model context/target records with stage "
                "sft",
          "rm": "reward modeling is not supported (glmtune trains supervised fine-tuning only: stage sft)",
          "ppo": "PPO (RLHF) is not supported (glmtune trains supervised fine-tuning only: stage sft)",
          "dpo": "DPO / preference training is not supported (glmtune trains supervised fine-tuning only: stage sft)",
          "kto": "KTO is not supported (glmtune trains supervised fine-tuning only: stage sft)"}
# LLaMA-Factory template -> what glmtune renders (the model folder's family decides; the note says which).
TEMPLATES = {"chatglm3": "the official ChatGLM3 format (LLaMA-Factory's own chatglm3 template renders tools in GLM-4's "
                         "format; glmtune renders them as ChatGLM3's official code)",
             "chatglm2": "the official ChatGLM2 format ([Round N] prompts, THUDM's P-Tuning preprocessing)",
             "glm4": "the official GLM-4 format (THUDM's GLM-4 finetune.py; GLM-4-0414: the folder's chat template)"}


def translation_notes(path: str | Path, overrides: list[str] | tuple = ()) -> list[str]:
    """What each key of a LLaMA-Factory config file (and its ``key=value`` overrides) became; empty for others."""
    data, lines = read_yaml(Path(path))
    if not is_llamafactory(data):
        return []
    source = Source(str(path), lines)
    return convert_llamafactory(apply_cli_overrides(data, list(overrides), source)[0], source)[1]


def apply_cli_overrides(data: dict, overrides: list[str], source: Source) -> tuple[dict, list[str]]:
    """(config with LLaMA-Factory's own overrides applied, the glmtune ``section.key=value`` overrides left).

    ``llamafactory-cli train x.yaml learning_rate=1e-4`` sets one of its keys: a key
    with no dot (``--learning_rate=1e-4`` too) is applied here, before translation, so it
    means what it means in the YAML; an unknown one is answered with the nearest name
    when the config is translated. Dotted keys are glmtune's and apply after.
    """
    data, rest = dict(data), []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key or "." in key or key in OUR_SECTIONS:
            rest.append(item)
            continue
        try:
            data[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            data[key] = raw
        source.lines.pop(key, None)
        source.overridden.add(key)  # errors about it say "command-line override KEY"
    return data, rest


def is_llamafactory(data: dict) -> bool:
    """True for a LLaMA-Factory training config (its keys, none of glmtune's sections)."""
    return any(k in data for k in MARKERS) and not any(k in data for k in OUR_SECTIONS)


def convert_llamafactory(data: dict, source: Source) -> tuple[dict, list[str]]:
    """(glmtune config dict, one note per key) of a LLaMA-Factory training config dict."""
    _check_refused(data, source)
    out: dict = {"training": {"gradient_checkpointing": not data.get("disable_gradient_checkpointing", False)}}
    for key, value in HF_DEFAULTS.items():
        _set(out, key, value)
    _set(out, "evaluation.max_eval_samples", None)  # LLaMA-Factory evaluates on the whole validation set
    notes: list[str] = []
    _method(data, out, notes)
    _data(data, out, notes, source)
    hf_args = {}
    for key, value in data.items():
        if key in DIRECT:
            _set(out, DIRECT[key], value)
            source.alias(DIRECT[key], key)
            notes.append(f"{key}: {value!r} -> {DIRECT[key]}")
        elif key in IGNORED:
            notes.append(f"{key}: ignored ({IGNORED[key]})")
        elif key in HANDLED:
            continue
        else:
            hf_args[key] = value
            source.alias(f"training_args.{key}", key)  # errors of _training_args point at the key's line
            if key in source.overridden:  # ... or at the command line (apply_cli_overrides)
                source.overridden.add(f"training_args.{key}")
    _hf_training_args(hf_args, out, source, notes)
    return out, notes


def _check_refused(data: dict, source: Source) -> None:
    """Every key glmtune cannot honour, in one error: each with its nearest equivalent or the reason."""
    problems = []
    stage = data.get("stage", "sft")
    if stage != "sft":
        problems.append(f"stage: {stage} ({STAGES.get(stage, 'unknown stage')})")
    template = data.get("template")
    if template is not None and template not in TEMPLATES:
        problems.append(f"template: {template} (glmtune trains the GLM family in each model's official format: use "
                        f"template: {', '.join(TEMPLATES)})")
    kind = data.get("finetuning_type", "lora")
    if kind not in FINETUNING_TYPES:
        problems.append(f"finetuning_type: {kind} (supported: lora, freeze, full)")
    if data.get("freeze_trainable_modules", "all") != "all":
        problems.append("freeze_trainable_modules: only `all` is supported (nearest: a glmtune config with "
                        "method.freeze.trainable_modules glob patterns)")
    for key, (fine, why) in REFUSED.items():
        if data.get(key) not in (fine, None):
            problems.append(f"{key}: {data[key]!r} ({why})")
    if problems:
        count = f"{len(problems)} option{'s' if len(problems) > 1 else ''}"
        raise ConfigError(f"{source.name}: this LLaMA-Factory config sets {count} glmtune does not support: "
                          + "; ".join(problems))


def _method(data: dict, out: dict, notes: list[str]) -> None:
    kind = FINETUNING_TYPES[data.get("finetuning_type", "lora")]
    _set(out, "method.name", kind)
    notes.append(f"finetuning_type: {data.get('finetuning_type', 'lora')!r} -> method.name {kind}")
    for key in METHOD_KEYS:
        if key in data and not key.startswith(_METHOD_PREFIX[kind]):
            notes.append(f"{key}: ignored (finetuning_type is {kind})")
    if kind == "freeze":
        _set(out, "method.freeze.trainable_layers", data.get("freeze_trainable_layers", 2))
    if kind != "lora":
        return
    for key in ("use_rslora", "use_dora"):
        if key in data:
            _set(out, f"method.lora.{key}", data[key])
    rank = data.get("lora_rank", 8)
    values = {"r": rank, "alpha": data.get("lora_alpha") or rank * 2,  # LLaMA-Factory: lora_alpha = 2 x rank
              "dropout": data.get("lora_dropout", 0.0)}
    for (ours, value), key in zip(values.items(), ("lora_rank", "lora_alpha", "lora_dropout")):
        _set(out, f"method.lora.{ours}", value)
        notes.append(f"{key}: {data[key]!r} -> method.lora.{ours}" if key in data else
                     f"{key}: (left out) -> method.lora.{ours} {value!r}, LLaMA-Factory's default")
    target = data.get("lora_target", "all")
    names = [t.strip() for t in target.split(",") if t.strip()] if isinstance(target, str) else target
    ours = "all-linear" if names == ["all"] else names
    _set(out, "method.lora.target", ours)
    notes.append(f"lora_target: {target!r} -> method.lora.target {ours!r}")


def _dataset_dir(data: dict, source: Source) -> Path:
    """``dataset_dir`` against the working directory, as llamafactory-cli; run from elsewhere, say where to run."""
    raw = str(data.get("dataset_dir", "data"))
    given = Path(raw).expanduser()
    if given.is_absolute():
        return given
    beside = Path(source.name).resolve().parent / given
    if data.get("dataset") and not (Path.cwd() / given).is_dir() and beside.is_dir() and beside != Path.cwd() / given:
        raise ConfigError(f"{source.where('dataset_dir')}: dataset_dir {raw!r} is not a folder of the working "
                          f"directory {Path.cwd()} (llamafactory-cli resolves it there; glmtune does the same); it is "
                          f"beside the config: run from {beside.parent}, or set dataset_dir: {beside}")
    return Path.cwd() / given


def _data(data: dict, out: dict, notes: list[str], source: Source) -> None:
    dataset_dir = _dataset_dir(data, source)
    datasets = data.get("dataset")
    if datasets is not None:
        names = [s.strip() for s in datasets.split(",") if s.strip()] if isinstance(datasets, str) else datasets
        registry = default_registry(dataset_dir)
        _set(out, "data.datasets", names)
        _set(out, "data.registry_file", registry)
        notes.append(f"dataset: {datasets!r} -> data.datasets {names} from {registry}")
    _set(out, "data.data_dir", str(dataset_dir))
    cutoff = data.get("cutoff_len", 2048)
    for key, value in (("max_seq_length", cutoff), ("max_input_length", None), ("max_output_length", None)):
        _set(out, f"data.{key}", value)
    notes.append(f"cutoff_len: {cutoff} -> data.max_seq_length (over-long samples are cut at the end, as the "
                 "official demo does; LLaMA-Factory shortens prompt and answer in proportion)")
    seed = data.get("seed", 42)  # Hugging Face's default, which LLaMA-Factory's train_test_split then uses
    _set(out, "data.seed", seed)
    if data.get("val_size"):
        _set(out, "data.val_size", data["val_size"])
        notes.append(f"val_size: {data['val_size']} -> data.val_size (split seeded by seed {seed}, as "
                     "LLaMA-Factory's train_test_split)")
    if data.get("packing") or data.get("neat_packing"):
        _set(out, "data.packing", True)
        notes.append("packing/neat_packing -> data.packing (no attention across packed samples, as neat_packing)")
    if "template" in data:
        notes.append(f"template: {data['template']!r} -> {TEMPLATES[data['template']]}; the format follows the model "
                     "folder's family (model.family)")


METHOD_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "use_rslora", "use_dora",
               "freeze_trainable_layers")
_METHOD_PREFIX = {"lora": ("lora_", "use_"), "freeze": ("freeze_",), "full": ("-",)}
# Keys read by _method / _data / _check_refused (not passed on as training arguments).
HANDLED = {"stage", "finetuning_type", "template", *METHOD_KEYS, "dataset", "dataset_dir", "cutoff_len", "val_size", "packing",
           "neat_packing", "disable_gradient_checkpointing", *REFUSED}


def _hf_training_args(args: dict, out: dict, source: Source, notes: list[str]) -> None:
    """Seq2SeqTrainingArguments fields, read as the official demo's ``training_args`` are."""
    known = set(TRAINING_ARGS_MAP) | set(IGNORED_TRAINING_ARGS) | {
        "evaluation_strategy", "eval_strategy", "save_strategy", "generation_config", "generation_num_beams",
        "use_cpu", "bf16", "fp16", "tf32"}
    for key in args:
        # TrainingArguments' own fields are looked up only for a key glmtune does not know: importing
        # transformers takes seconds, and a config error must come back at once.
        if key not in known and key not in extra_args_fields():
            options = sorted(set(MARKERS) | set(DIRECT) | set(IGNORED) | HANDLED | set(TRAINING_ARGS_MAP))
            raise unknown_key(source.where(key), key, options, "LLaMA-Factory option glmtune can use",
                              "src/llamafactory/hparams (glmtune reads the options listed in the README)")
    _training_args(args, out, source)
    if "eval_steps" not in args:  # Hugging Face: eval_steps defaults to logging_steps
        _set(out, "evaluation.steps", out["training"]["logging_steps"])
    extra = out["training"].get("extra_args", {})
    for key, value in args.items():
        ours = SPECIAL_ARGS.get(key) or TRAINING_ARGS_MAP.get(key) or (f"training.extra_args.{key}" if key in extra
                                                                      else None)
        notes.append(f"{key}: {value!r} -> {ours}" if ours else
                     f"{key}: {value!r} -> ignored ({IGNORED_TRAINING_ARGS.get(key, 'no effect with this value')})")


SPECIAL_ARGS = {"bf16": "training.precision", "fp16": "training.precision", "use_cpu": "model.device",
                "eval_strategy": "evaluation.strategy", "evaluation_strategy": "evaluation.strategy",
                "save_strategy": "training.save_steps (no: 0)", "generation_config": "evaluation.max_new_tokens",
                "seed": "training.seed and data.seed (the val_size split)"}
