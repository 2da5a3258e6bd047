"""Training configuration: typed sections, YAML files, dotted overrides, the official demo format.

``load_config(path_or_dict, overrides)`` returns a checked :class:`TrainConfig`
or raises :class:`ConfigError` naming the file, line, option, what was expected
and the fix, always before any model or data is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from ..data.registry import default_registry, registry_sources
from ..errors import GlmtuneError
from .llamafactory import apply_cli_overrides, convert_llamafactory, is_llamafactory
from .official import convert_official, is_official
from .parse import ConfigError, Source, apply_overrides, build, read_yaml, to_dict
from .schema import (
    METHOD_ALIASES,
    METHOD_SECTIONS,
    EvaluationConfig,
    MethodConfig,
    ModelConfig,
    OutputConfig,
    TrainConfig,
    TrainingConfig,
    check_deepspeed,
)
from ..models import SHAPES

__all__ = [
    "ConfigError",
    "EvaluationConfig",
    "MethodConfig",
    "ModelConfig",
    "OutputConfig",
    "TrainConfig",
    "TrainingConfig",
    "check_deepspeed",
    "config_to_dict",
    "load_config",
    "save_config",
]

DATA_FILE_FIELDS = ("train_file", "val_file", "test_file")


def load_config(
    path_or_dict: str | os.PathLike | dict,
    overrides: list[str] | None = None,
    *,
    model_dir: str | None = None,
    data_dir: str | None = None,
    datasets: str | None = None,
    check_files: bool = True,
) -> TrainConfig:
    """A checked :class:`TrainConfig` from a YAML file or a dict, plus ``a.b=value`` overrides.

    Official ChatGLM3 finetune_demo configs and LLaMA-Factory training configs
    (:mod:`glmtune.config.llamafactory`) are recognised and converted;
    ``model_dir`` / ``data_dir`` are the official command's positional
    arguments. Relative paths (:func:`_resolve_paths`): written in a config
    file, against that file's folder; given on the command line (overrides,
    ``model_dir``/``data_dir``) or in a dict, against the working directory;
    data files named in the file, against ``data.data_dir`` (default: the
    file's folder). Official configs keep the demo's rule: their data files
    resolve against DATA_DIR, everything else against the working directory.
    ``datasets`` (``--dataset a,b``) replaces the training files with those
    registry names, read from ``data.registry_file``, else DATA_DIR/dataset_info.json,
    else the bundled registry of public datasets.
    """
    if isinstance(path_or_dict, dict):
        data, source = path_or_dict, Source("<config dict>")
        base = Path.cwd()
    else:
        path = Path(path_or_dict)
        data, lines = read_yaml(path)
        source = Source(str(path), lines)
        base = path.resolve().parent
    if is_official(data):
        data = convert_official(data, source)
        base = Path.cwd()  # the demo resolves its data files against DATA_DIR, else the working dir
    elif is_llamafactory(data):
        data, overrides = apply_cli_overrides(data, list(overrides or []), source)  # learning_rate=1e-4, as LF
        data = convert_llamafactory(data, source)[0]
        base = Path.cwd()  # llamafactory-cli resolves every path against the working directory
    data = apply_overrides(data, [], source)
    if model_dir is not None:
        data.setdefault("model", {})["path"] = str(model_dir)
        source.overridden.add("model.path")
    if data_dir is not None:
        data.setdefault("data", {})["data_dir"] = str(data_dir)
        source.overridden.add("data.data_dir")
    data = apply_overrides(data, list(overrides or []), source)
    if check_files:
        check_model_path(data, base, source)
    _resolve_paths(data, base, source)
    _default_data_dir(data, base)
    if datasets is not None:
        _use_datasets(data, datasets, source)
    _check_method_sections(data, source)
    cfg = build(TrainConfig, data, "", source)
    if check_files:
        check_data_files(cfg, source)
        try:
            check_deepspeed(cfg.training.deepspeed)
        except ConfigError as exc:
            raise ConfigError(f"{source.where('training.deepspeed')}: {exc}", key=exc.key) from None
    return cfg


# Path options resolved at load time (dotted key -> resolved against the data folder instead of the file's).
PATH_FIELDS = {"model.path": False, "model.tokenizer": False, "training.deepspeed": False,
               "data.data_dir": False, "data.registry_file": False,
               **{f"data.{name}": True for name in DATA_FILE_FIELDS + ("train_files",)}}


def _resolve_paths(data: dict, base: Path, source: Source) -> None:
    """Make relative paths absolute by where they were written (see :func:`load_config`).

    Data files from the config file stay relative: they resolve against
    ``data.data_dir`` when read. A data file given on the command line
    resolves against the working directory, unless ``data.data_dir`` is given
    there too (then against it). Shape names (``model.path=tiny``) stay names.
    """
    cwd = Path.cwd()
    data_dir_on_cli = "data.data_dir" in source.overridden
    for key, is_data_file in PATH_FIELDS.items():
        section, name = key.split(".")
        node = data.get(section)
        if not isinstance(node, dict) or not node.get(name):
            continue
        on_cli = key in source.overridden
        if is_data_file and (not on_cli or data_dir_on_cli):
            continue
        if key == "model.path" and _is_shape(node[name]) or key == "data.registry_file" and node[name] == "bundled":
            continue  # a name, not a path
        root = cwd if on_cli else base
        value = node[name]
        node[name] = [_absolute(v, root) for v in value] if isinstance(value, list) else _absolute(value, root)


def _absolute(value, root: Path):
    if not isinstance(value, str) or not value:
        return value  # the type check reports it
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else root / path)


def _is_shape(value) -> bool:
    return isinstance(value, str) and value in SHAPES


def check_model_path(data: dict, base: Path, source: Source) -> None:
    """A model.path that is neither a folder nor a shape name fails now, with what to do."""
    model = data.get("model")
    raw = model.get("path") if isinstance(model, dict) else None
    if not isinstance(raw, str) or not raw or _is_shape(raw):
        return
    root = Path.cwd() if "model.path" in source.overridden else base
    folder = Path(raw).expanduser()
    folder = folder if folder.is_absolute() else root / folder
    if not folder.is_dir():
        raise ConfigError(f"{source.where('model.path')}: {missing_model_message(raw, folder)}")


def missing_model_message(raw: str, folder: Path) -> str:
    """Why a model.path is unusable and what to do (shared with the training run's own check)."""
    text = f"model.path {raw!r}: the model folder {folder} does not exist. glmtune does not download models: " \
           "point model.path at a local folder holding the checkpoint (config.json, weights, tokenizer.model)"
    parts = raw.split("/")
    if len(parts) == 2 and all(parts) and not raw.startswith((".", "~")) and not Path(raw).is_absolute():
        text += (f"; {raw!r} looks like a Hugging Face hub id: download it first "
                 f"(e.g. `huggingface-cli download {raw} --local-dir models/{parts[1]}`)")
    elif "/" not in raw and "\\" not in raw:
        text += f", or use a named shape for random weights ({', '.join(SHAPES)})"
    return text


def _use_datasets(data: dict, datasets: str, source: Source) -> None:
    section = data.setdefault("data", {})
    section.update(train_file=None, train_files=[], datasets=[s.strip() for s in datasets.split(",") if s.strip()])
    if not section.get("registry_file"):
        section["registry_file"] = default_registry(section["data_dir"])
    source.overridden.update({"data.datasets", "data.registry_file"})


def _check_method_sections(data: dict, source: Source) -> None:
    """A section of another method than the chosen one is a mistake (its options would do nothing)."""
    method = data.get("method")
    if not isinstance(method, dict):
        return
    name = str(method.get("name", "lora"))
    name = METHOD_ALIASES.get(name, name)
    for other, section in METHOD_SECTIONS.items():
        if other != name and method.get(section) not in (None, {}) and not _is_default(other, method[section]):
            raise ConfigError(
                f"{source.where('method.' + section)}: method.{section} options do not apply to method "
                f"{name!r}; remove the method.{section} section, or set method.name={other}"
            )


def _is_default(method: str, values) -> bool:
    """A section equal to the method's defaults (as a resolved config.yaml writes it) sets nothing."""
    default = getattr(MethodConfig(), method)
    return isinstance(values, dict) and values == to_dict(default)


def _default_data_dir(data: dict, base: Path) -> None:
    section = data.get("data")
    if isinstance(section, dict) and not section.get("data_dir"):
        section["data_dir"] = str(base)


def check_data_files(cfg: TrainConfig, source: Source) -> None:
    """Every named data file exists (a clear error now beats one after loading a 12 GB model)."""
    if not cfg.data.has_train():
        raise ConfigError(f"{source.name}: no training data; set data.train_file (or data.datasets with a registry)")
    base = Path(cfg.data.data_dir or ".")
    for name in DATA_FILE_FIELDS + ("train_files", "registry_file"):
        value = getattr(cfg.data, name)
        for item in value if isinstance(value, list) else [value] if value and value != "bundled" else []:
            candidate = Path(item) if Path(item).is_absolute() else base / item
            if not candidate.exists():
                raise ConfigError(
                    f"{source.where('data.' + name)}: data.{name} {item!r} not found (looked for {candidate}); "
                    "fix the path, or set data.data_dir (the official command's DATA_DIR) to its folder"
                )
    if cfg.data.datasets:
        try:  # every name known and its file present, before any model loads
            registry_sources(cfg.data.registry_file, cfg.data.datasets, base)
        except GlmtuneError as exc:
            raise ConfigError(f"{source.where('data.datasets')}: {exc}", key="data.datasets") from None


def config_to_dict(cfg: TrainConfig) -> dict:
    """The resolved config as plain data (round-trips through :func:`load_config`)."""
    return to_dict(cfg)


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (every option, defaults included)."""
    path = Path(path)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)
    path.write_text("# resolved glmtune training config (every option, defaults included)\n" + text, encoding="utf-8")
    return path
