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

Options the official files leave out take the values the demo gets from
Hugging Face (:data:`HF_DEFAULTS`: ``Seq2SeqTrainingArguments`` of the
transformers 4.40 it pins, PEFT's ``LoraConfig``), not glmtune's own defaults.
"""

from __future__ import annotations

from dataclasses import fields

from .parse import ConfigError, Source, closest, unknown_key

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
    "report_to": "training.report_to",
}
# What the demo gets from Hugging Face for an option its YAML leaves out, where glmtune's own default
# differs (Seq2SeqTrainingArguments of transformers 4.40, the version the demo pins; PEFT's LoraConfig).
# Same in both: num_train_epochs 3, max_steps -1, warmup 0, weight decay 0, AdamW betas/eps, max_grad_norm 1,
# gradient_accumulation_steps 1, seed 42, save_steps 500, dataloader_num_workers 0, optim adamw_torch
# (transformers 5 defaults to the fused AdamW: the same update).
HF_DEFAULTS = {
    "training.learning_rate": 5e-5,
    "training.lr_scheduler": "linear",
    "training.batch_size": 8,
    "training.logging_steps": 500,
    "training.save_total_limit": None,  # keep every checkpoint
    "training.report_to": ["all"],  # transformers 4.40: every installed integration
    "evaluation.batch_size": 8,
    "evaluation.strategy": "no",
    "evaluation.generate": False,  # predict_with_generate
    "evaluation.max_eval_samples": 50,  # the demo's eval set is val_dataset.select(range(50))
    "evaluation.max_test_samples": None,  # trainer.predict(test_dataset): every test record
}
LORA_DEFAULTS = {"alpha": 8, "dropout": 0.0, "target": ["query_key_value"]}  # peft.LoraConfig on ChatGLM
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
        raise unknown_key(source.where(unknown[0]), str(unknown[0]), list(OFFICIAL_KEYS),
                          "top-level key (official format)")
    out: dict = {"training": {"gradient_checkpointing": True}}  # the demo always enables it
    for key, value in HF_DEFAULTS.items():
        _set(out, key, value)
    _data_section(data, out, source)
    args = data.get("training_args") or {}
    _training_args(args, out, source)
    if "eval_steps" not in args:  # Hugging Face: eval_steps defaults to logging_steps
        _set(out, "evaluation.steps", out["training"]["logging_steps"])
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
            raise unknown_key(source.where("data_config." + key), f"data_config.{key}", list(known))
        ours = "data.num_workers" if key == "num_proc" else f"data.{key}"
        _set(out, ours, value)
        source.alias(ours, f"data_config.{key}")
    for key in ("max_input_length", "max_output_length"):
        if key in data:
            _set(out, f"data.{key}", data[key])
            source.alias(f"data.{key}", key)


def _training_args(args: dict, out: dict, source: Source) -> None:
    if not isinstance(args, dict):
        raise ConfigError(f"{source.where('training_args')}: training_args must be a mapping of "
                          "Seq2SeqTrainingArguments fields")
    for key, value in args.items():
        where = source.where(f"training_args.{key}")
        if key in TRAINING_ARGS_MAP:
            _set(out, TRAINING_ARGS_MAP[key], value)
            source.alias(TRAINING_ARGS_MAP[key], f"training_args.{key}")
        elif key in IGNORED_TRAINING_ARGS:
            continue
        elif key in ("evaluation_strategy", "eval_strategy"):
            # transformers 4.46 renamed evaluation_strategy and 5.x removed the old name.
            _set(out, "evaluation.strategy", value)
        elif key == "save_strategy":
            if value not in ("steps", "no", False):  # YAML 1.1 reads a bare `no` as false
                raise ConfigError(f"{where}: save_strategy {value!r} is not supported; use steps (with save_steps) "
                                  "or no")
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
        elif key in (hf_fields := extra_args_fields()):  # only an unknown key costs the transformers import
            out.setdefault("training", {}).setdefault("extra_args", {})[key] = value
        else:
            raise unknown_key(where, f"training_args.{key}", hf_fields + ["evaluation_strategy"],
                              "TrainingArguments field glmtune can use", "`transformers.Seq2SeqTrainingArguments`")
    if args.get("save_strategy") in ("no", False):
        # After the loop: the official files write save_steps after save_strategy, and `no` must win.
        _set(out, "training.save_steps", 0)


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
    if name == "lora":
        for key, value in LORA_DEFAULTS.items():
            _set(out, f"method.lora.{key}", value)
    for key, value in peft.items():
        if key == "peft_type" or key in PEFT_IGNORED:
            if key == "task_type" and str(value).upper() != "CAUSAL_LM":
                raise ConfigError(f"{source.where('peft_config.task_type')}: task_type must be CAUSAL_LM")
            continue
        if key not in mapping:
            raise ConfigError(f"{source.where('peft_config.' + key)}: peft_config.{key} does not apply to "
                              f"{peft_type}; {closest(key, list(mapping))}valid options: {', '.join(mapping)}",
                              key=f"peft_config.{key}")
        _set(out, f"method.{name}.{mapping[key]}", value)
        source.alias(f"method.{name}.{mapping[key]}", f"peft_config.{key}")


def extra_args_fields() -> list[str]:
    """What ``training.extra_args`` may set: ``transformers.TrainingArguments`` fields (the class we build)."""
    from transformers import TrainingArguments  # deferred: heavy, and only needed for these names

    return [f.name for f in fields(TrainingArguments) if f.init]


def check_extra_args(extra: dict) -> None:
    """``training.extra_args``: transformers field names, not glmtune's own options, no FSDP."""
    if not extra:
        return
    known = extra_args_fields()
    for key in ("fsdp", "fsdp_config"):
        if extra.get(key):
            # accelerate's FSDP plugin ignores CPU process groups and saves through HF's own _save: glmtune shards
            # with fully_shard itself (train/distributed.py), switched on by its own option.
            raise ConfigError(f"training.extra_args.{key}: transformers' FSDP is not supported through extra_args; set "
                              "training.fsdp.enabled=true (FSDP2, see examples/fsdp-lora.yaml)",
                              key=f"training.extra_args.{key}")
    for key in extra:
        if key in TRAINING_ARGS_MAP:
            raise ConfigError(f"training.extra_args.{key} is a glmtune option: set {TRAINING_ARGS_MAP[key]} instead",
                              key=f"training.extra_args.{key}")
        if key not in known:
            raise unknown_key(None, f"training.extra_args.{key}", known, "transformers TrainingArguments field",
                              "`transformers.TrainingArguments`")
