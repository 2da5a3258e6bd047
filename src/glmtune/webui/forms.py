"""The train form: its values -> a config dict -> the checked, resolved config (same loader as the CLI)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import config_to_dict, load_config
from ..data.by_name import DEFAULT_DATASET_DIR, dataset_names, registry_path, split_names
from ..errors import UserError
from ..methods.catalog import METHODS  # the one method registry (names for the form's radio)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
EVAL_STRATEGIES = ("no", "steps", "epoch")


@dataclass
class TrainForm:
    """Every field of the UI's train page (plain values, as Gradio passes them)."""

    model_path: str
    train_file: str
    output_root: str
    run_name: str
    val_file: str = ""
    dataset: str | list = ""
    """Registry names instead of ``train_file`` (a list from the multi-select, or ``a,b:0.5``), as ``--dataset``."""
    dataset_dir: str = DEFAULT_DATASET_DIR
    data_format: str = "auto"
    method: str = "lora"
    lora_r: int = 8
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lora_target: str = "qkv"
    prefix_tokens: int = 128
    freeze_layers: int = 2
    max_input_length: int = 512
    max_output_length: int = 512
    packing: bool = False
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_steps: int = 0
    max_steps: int = 100
    num_epochs: float = 3.0
    precision: str = "auto"
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_steps: int = 100
    eval_strategy: str = "no"
    eval_steps: int = 100
    eval_generate: bool = False

    def run_dir(self) -> Path:
        name = self.run_name.strip()
        if not name or "/" in name or name in (".", ".."):
            raise UserError(f"run name {self.run_name!r}: expected a plain folder name (no '/'), e.g. lora-1")
        return Path(self.output_root).expanduser().resolve() / name


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path.strip() else ""


def _method_section(form: TrainForm) -> dict:
    section: dict = {"name": form.method}
    if form.method == "lora":
        section["lora"] = {"r": int(form.lora_r), "alpha": float(form.lora_alpha), "dropout": float(form.lora_dropout),
                           "target": form.lora_target}
    elif form.method == "ptuning":
        section["ptuning"] = {"num_virtual_tokens": int(form.prefix_tokens)}
    elif form.method == "freeze":
        section["freeze"] = {"trainable_layers": int(form.freeze_layers)}
    return section


def _training_data(form: TrainForm) -> dict:
    """The data section's training part: registry names (as ``glmtune train --dataset``) or one file."""
    names = split_names(form.dataset)
    if names:
        folder = _absolute(form.dataset_dir or DEFAULT_DATASET_DIR)
        return {"datasets": names, "data_dir": folder, "registry_file": registry_path(None, folder)}
    if not form.train_file.strip():
        raise UserError("training data: empty; pick or upload a data file on the Data page, type its path, or "
                        "choose datasets by name")
    return {"train_file": _absolute(form.train_file)}


def dataset_choices(dataset_dir: str | None = None) -> list[str]:
    """Names the dataset picker offers: DATASET_DIR/dataset_info.json's, else the bundled registry's."""
    return dataset_names(dataset_dir or DEFAULT_DATASET_DIR)


def form_to_config(form: TrainForm) -> dict:
    """The config dict the form describes (absolute paths: the YAML is trained from the run folder)."""
    if not form.model_path.strip():
        raise UserError("model folder: empty; give a model folder (e.g. THUDM/chatglm3-6b downloaded locally)")
    data = {**_training_data(form), "format": form.data_format,
            "max_input_length": int(form.max_input_length), "max_output_length": int(form.max_output_length),
            "packing": bool(form.packing)}
    if form.val_file.strip():
        data["val_file"] = _absolute(form.val_file)
    training = {"learning_rate": float(form.learning_rate), "lr_scheduler": form.lr_scheduler,
                "warmup_steps": int(form.warmup_steps), "batch_size": int(form.batch_size),
                "gradient_accumulation_steps": int(form.gradient_accumulation_steps),
                "precision": form.precision, "gradient_checkpointing": bool(form.gradient_checkpointing),
                "logging_steps": int(form.logging_steps), "save_steps": int(form.save_steps)}
    if int(form.max_steps) > 0:
        training["max_steps"] = int(form.max_steps)
    else:
        training["num_epochs"] = float(form.num_epochs)
    evaluation = {"strategy": form.eval_strategy if form.val_file.strip() else "no"}
    if evaluation["strategy"] != "no":
        evaluation.update({"steps": int(form.eval_steps), "generate": bool(form.eval_generate)})
    return {"model": {"path": _absolute(form.model_path)}, "data": data, "method": _method_section(form),
            "training": training, "evaluation": evaluation, "output": {"dir": str(form.run_dir())}}


def resolve(form: TrainForm) -> tuple[dict, str]:
    """(resolved config dict, its YAML): checked by the CLI's loader, every default filled in."""
    cfg = load_config(form_to_config(form))
    resolved = config_to_dict(cfg)
    return resolved, yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)


def model_summary(path: str) -> str:
    """One line about a model folder: its kind (ChatGLM3 / native GLM) and size, or what is wrong."""
    folder = Path(path).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        return f"{folder}: no config.json (expected a model folder)"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return f"{config_file}:{exc.lineno}: invalid JSON ({exc.msg})"
    kind = {"chatglm": "ChatGLM3 layout", "glm": "native GLM layout"}.get(config.get("model_type"),
                                                                         f"model_type {config.get('model_type')!r}")
    layers = config.get("num_layers", config.get("num_hidden_layers"))
    hidden = config.get("hidden_size")
    vocab = config.get("padded_vocab_size", config.get("vocab_size"))
    return f"{kind}: {layers} layers, hidden size {hidden}, vocabulary {vocab}"
