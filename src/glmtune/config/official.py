"""Read the official ChatGLM3 ``finetune_demo/configs/*.yaml`` files unchanged.

Their shape is ``data_config`` (train_file / val_file / test_file / num_proc),
``max_input_length``, ``max_output_length``, ``training_args`` (fields of
``transformers.Seq2SeqTrainingArguments``) and ``peft_config`` (PEFT's
``get_peft_config`` dict: ``peft_type: LORA | PREFIX_TUNING``); no
``peft_config`` means full fine-tuning (``sft.yaml``). This module rewrites
such a dict into our sections, keeping the demo's behaviour where it matters
(gradient checkpointing is always on in the demo; eval needs a val_file).
``training_args`` fields we do not model go to ``training.extra_args`` when
current transformers knows them, so nothing a user wrote is silently lost.
"""

from __future__ import annotations

from .parse import ConfigError, Source, closest

OFFICIAL_KEYS = ("data_config", "max_input_length", "max_output_length", "training_args", "peft_config")

# training_args field -> our dotted key (plain registry).
TRAINING_ARGS_MAP = {
    "output_dir": "output.dir",
    "max_steps": "training.max_steps",
    "num_train_epochs": "training.num_epochs",
    "learning_rate": "training.learning_rate",
    "lr_scheduler_type": "training.lr_scheduler",
    "warmup_steps": "training.warmup_steps",
    "warmup_ratio": "training.warmup_ratio",
    "weight_decay": "training.weight_decay",
    "adam_beta1": "training.adam_beta1",
    "adam_beta2": "training.adam_beta2",
    "adam_epsilon": "training.adam_epsilon",
    "max_grad_norm": "training.max_grad_norm",
    "optim": "training.optim",
    "per_device_train_batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "seed": "training.seed",
    "dataloader_num_workers": "training.dataloader_num_workers",
    "save_steps": "training.save_steps",
    "save_total_limit": "training.save_total_limit",
    "logging_steps": "training.logging_steps",
    "deepspeed": "training.deepspeed",
    "resume_from_checkpoint": "training.resume",
    "per_device_eval_batch_size": "evaluation.batch_size",
    "eval_steps": "evaluation.steps",
    "predict_with_generate": "evaluation.generate",
}
# Accepted and deliberately without effect here (with the reason, for --help-config / the docs).
IGNORED_TRAINING_ARGS = {
    "remove_unused_columns": "our collator builds exactly the model's inputs",
    "log_level": "glmtune prints its own progress; use transformers' env TRANSFORMERS_VERBOSITY for more",
    "logging_strategy": "logging is every logging_steps steps",
    "debug": "non-finite losses always stop the run with a message",
    "do_train": "glmtune train always trains",
    "do_eval": "evaluation runs when a val_file is given and eval strategy is not 'no'",
    "do_predict": "the test set is scored when test_file is given",
    "overwrite_output_dir": "see output.if_exists (an existing run is never silently overwritten)",
    "report_to": "TensorBoard is used when installed (training.tensorboard)",
    "logging_dir": "TensorBoard logs go to OUTPUT/runs",
    # Seq2SeqTrainingArguments-only fields: never passed on (glmtune builds plain TrainingArguments).
    "sortish_sampler": "batches follow the shuffled data order (and packing)",
    "generation_max_length": "answers are bounded by generation_config.max_new_tokens (evaluation.max_new_tokens)",
}
PEFT_TYPES = {"LORA": "lora", "PREFIX_TUNING": "ptuning", "P_TUNING": "ptuning"}
LORA_MAP = {"r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "target",
            "use_rslora": "use_rslora", "use_dora": "use_dora"}
PREFIX_MAP = {"num_virtual_tokens": "num_virtual_tokens", "prefix_projection": "prefix_projection",
              "encoder_hidden_size": "prefix_hidden_size"}
PEFT_IGNORED = ("task_type", "inference_mode", "base_model_name_or_path", "revision", "token_dim",
                "num_transformer_submodules", "num_attention_heads", "num_layers", "bias", "fan_in_fan_out")


def is_official(data: dict) -> bool:
    """True for a finetune_demo-style dict (its top-level keys are not our sections)."""
    return any(key in data for key in OFFICIAL_KEYS)


def _set(out: dict, dotted: str, value) -> None:
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def convert_official(data: dict, source: Source) -> dict:
    """Our config dict for an official finetune_demo config dict (model/data dir set by the caller)."""
    unknown = [k for k in data if k not in OFFICIAL_KEYS]
    if unknown:
        raise ConfigError(f"{source.where(unknown[0])}: unknown top-level key {unknown[0]!r} in an official-format "
                          f"config; {closest(unknown[0], list(OFFICIAL_KEYS))}known keys: {', '.join(OFFICIAL_KEYS)}")
    out: dict = {"training": {"gradient_checkpointing": True}}  # the demo always enables it
    _data_section(data, out, source)
    _training_args(data.get("training_args") or {}, out, source)
    _peft_section(data.get("peft_config"), out, source)
    if not out["data"].get("val_file"):
        _set(out, "evaluation.strategy", "no")  # the demo skips evaluation without a val_file
    return out


def _data_section(data: dict, out: dict, source: Source) -> None:
    cfg = data.get("data_config")
    if not isinstance(cfg, dict) or "train_file" not in cfg:
        raise ConfigError(f"{source.where('data_config')}: data_config must be a mapping with at least train_file")
    known = ("train_file", "val_file", "test_file", "num_proc")
    for key, value in cfg.items():
        if key not in known:
            raise ConfigError(f"{source.where('data_config.' + key)}: unknown option data_config.{key}; "
                              f"{closest(key, list(known))}known: {', '.join(known)}")
        if key == "num_proc":
            _set(out, "data.num_workers", value)
        else:
            _set(out, f"data.{key}", value)
    for key in ("max_input_length", "max_output_length"):
        if key in data:
            _set(out, f"data.{key}", data[key])


def _training_args(args: dict, out: dict, source: Source) -> None:
    from .schema import extra_args_fields

    hf_fields = extra_args_fields()
    for key, value in args.items():
        where = source.where(f"training_args.{key}")
        if key in TRAINING_ARGS_MAP:
            _set(out, TRAINING_ARGS_MAP[key], value)
        elif key in IGNORED_TRAINING_ARGS:
            continue
        elif key in ("evaluation_strategy", "eval_strategy"):
            # transformers 4.46 renamed evaluation_strategy and 5.x removed the old name.
            _set(out, "evaluation.strategy", value)
        elif key == "save_strategy":
            if value == "no":
                _set(out, "training.save_steps", 0)
            elif value not in ("steps", "epoch"):
                raise ConfigError(f"{where}: save_strategy {value!r} is not supported; use steps, epoch or no")
        elif key == "generation_config":
            _generation_config(value, out, where)
        elif key == "generation_num_beams":
            if value not in (None, 1):
                raise ConfigError(f"{where}: generation_num_beams {value!r} is not supported; training evaluation "
                                  "decodes greedily (1)")
        elif key == "use_cpu":
            if value:
                _set(out, "model.device", "cpu")
        elif key in ("bf16", "fp16", "tf32"):
            if value and key != "tf32":
                _set(out, "training.precision", key)
        elif key in hf_fields:
            out.setdefault("training", {}).setdefault("extra_args", {})[key] = value
        else:
            raise ConfigError(f"{where}: training_args.{key} is not a TrainingArguments field glmtune can use; "
                              f"{closest(key, hf_fields + ['evaluation_strategy'])}check the spelling")


def _generation_config(value, out: dict, where: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: generation_config must be a mapping such as {{max_new_tokens: 512}}")
    for key, item in value.items():
        if key == "max_new_tokens":
            _set(out, "evaluation.max_new_tokens", item)
        elif key not in ("do_sample", "num_beams") or item not in (False, 1):
            raise ConfigError(f"{where}: generation_config.{key} is not supported during training evaluation "
                              "(greedy decoding with max_new_tokens, as the demo's defaults)")


def _peft_section(peft, out: dict, source: Source) -> None:
    if peft is None:
        _set(out, "method.name", "full")
        return
    if not isinstance(peft, dict):
        raise ConfigError(f"{source.where('peft_config')}: peft_config must be a mapping with peft_type")
    peft_type = str(peft.get("peft_type", "")).upper()
    if peft_type not in PEFT_TYPES:
        raise ConfigError(f"{source.where('peft_config.peft_type')}: peft_type {peft.get('peft_type')!r} is not "
                          f"supported; use one of {', '.join(PEFT_TYPES)}")
    name = PEFT_TYPES[peft_type]
    mapping = LORA_MAP if name == "lora" else PREFIX_MAP
    _set(out, "method.name", name)
    for key, value in peft.items():
        if key == "peft_type" or key in PEFT_IGNORED:
            if key == "task_type" and str(value).upper() != "CAUSAL_LM":
                raise ConfigError(f"{source.where('peft_config.task_type')}: task_type must be CAUSAL_LM")
            continue
        if key not in mapping:
            raise ConfigError(f"{source.where('peft_config.' + key)}: peft_config.{key} does not apply to "
                              f"{peft_type}; {closest(key, list(mapping))}known: {', '.join(mapping)}")
        _set(out, f"method.{name}.{mapping[key]}", value)
