"""Export a model (optionally with a LoRA/DoRA adapter merged in) as a standalone folder.

The folder holds everything a consumer needs and nothing it would have to
trust: sharded safetensors with an index, ``config.json``, the tokenizer
files, and a ``generation_config.json`` whose eos list stops chat turns
([eos, ``<|user|>``, ``<|observation|>``] — merged models that lost the last
two never stop talking). ``native`` is transformers' GLM layout (plain
``AutoModelForCausalLM.from_pretrained`` and serving engines that know GLM);
``chatglm3`` is THUDM's layout, for the official demos.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .models import CheckpointError

LAYOUTS = ("native", "chatglm3")
# Files of the official ChatGLM3 release that make its remote code and license
# travel with a chatglm3-layout export (copied as files, never imported).
_CHATGLM3_CODE_FILES = ("configuration_chatglm.py", "modeling_chatglm.py", "tokenization_chatglm.py",
                        "quantization.py")
_LICENSE_FILES = ("MODEL_LICENSE", "LICENSE", "LICENSE.txt", "NOTICE")


class ExportError(CheckpointError):
    """The export cannot be written as asked; the message says why and what to do."""


PTUNING_ADVICE = (
    "a P-Tuning v2 prefix cannot be merged into the weights: it adds key/value vectors in front of every "
    "sequence instead of changing a weight matrix. Options: (1) use it as it is: "
    "`glmtune chat/serve/eval --model BASE --prefix DIR`; (2) ship the base model together with the prefix "
    "folder (the official ChatGLM3 demos load it with pre_seq_len and prefix_encoder.safetensors); "
    "(3) train a LoRA adapter instead (method: lora), which exports as one merged model"
)


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    out_dir: Path
    layout: str
    dtype: torch.dtype
    merged_adapter: Path | None
    files: list[str] = field(default_factory=list)
    num_parameters: int = 0


def check_out_dir(out_dir: Path, *, force: bool, protected: list[Path]) -> None:
    """Refuse a non-empty folder unless ``force``, and never the folders we read from (even with ``force``)."""
    resolved = out_dir.resolve()
    for source in protected:
        if source is not None and Path(source).resolve() == resolved:
            raise ExportError(f"{out_dir}: is the folder being exported from; choose a different --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: exists and is not a folder; choose a different --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"{out_dir}: folder is not empty; choose an empty or new --out, or pass --force to "
                          "overwrite (files glmtune does not write are left in place)")


_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}


def parse_size(text: str) -> int:
    """Bytes of ``"2GB"``, ``"500MB"``, ``"1GiB"`` or a plain number (as transformers' max_shard_size)."""
    raw = str(text).strip().upper().replace(" ", "")
    for unit in sorted(_SIZE_UNITS, key=len, reverse=True):
        if raw.endswith(unit) and raw[: -len(unit)]:
            try:
                return int(float(raw[: -len(unit)]) * _SIZE_UNITS[unit])
            except ValueError:
                break
    if raw.isdigit():
        return int(raw)
    raise ExportError(f"shard size {text!r} not understood; use e.g. 2GB, 500MB or 1GiB")


def default_dtype(model_path: Path) -> torch.dtype:
    """The base checkpoint's storage dtype (fp16 for the official ChatGLM3), bf16 for named shapes."""
    from .models.checkpoint import checkpoint_dtype, weight_files

    if model_path.is_dir():
        stored = checkpoint_dtype(weight_files(model_path))
        if stored in (torch.float16, torch.bfloat16, torch.float32):
            return stored
    return torch.bfloat16


def load_merged(model_path, adapter, *, device="cpu", base_path_override=None):
    """Base model in float32 with ``adapter`` merged in (float32 so the merge adds no rounding of its own).

    ``adapter`` is any result :func:`glmtune.methods.load_trained` reads: a
    LoRA/DoRA folder (glmtune, PEFT or official ChatGLM3) is merged; a freeze
    or full result has its trained tensors copied into the base.
    """
    from .methods import load_trained, merge_adapter
    from .models import load_model

    model = load_model(model_path, dtype="fp32", device=device)
    if adapter is None:
        return model
    return merge_adapter(load_trained(model, adapter, base_path_override=base_path_override))


def copy_release_files(source: Path | None, out_dir: Path, layout: str) -> list[str]:
    """License files always; the official remote-code files (and their tokenizer config) for chatglm3 only."""
    if source is None or not source.is_dir():
        return []
    names = list(_LICENSE_FILES)
    if layout == "chatglm3":
        names += list(_CHATGLM3_CODE_FILES)
    copied = []
    for name in names:
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)
            copied.append(name)
    if layout == "chatglm3" and "modeling_chatglm.py" in copied:
        copied += _restore_official_configs(source, out_dir)
    return copied


def _restore_official_configs(source: Path, out_dir: Path) -> list[str]:
    # The official code is found through auto_map; keep it (and the official
    # tokenizer config) so `AutoModel.from_pretrained(out, trust_remote_code=True)` works.
    restored = []
    original = json.loads((source / "config.json").read_text()) if (source / "config.json").is_file() else {}
    if "auto_map" in original:
        cfg = json.loads((out_dir / "config.json").read_text())
        cfg["auto_map"] = original["auto_map"]
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        restored.append("config.json (auto_map)")
    if (source / "tokenizer_config.json").is_file():
        shutil.copyfile(source / "tokenizer_config.json", out_dir / "tokenizer_config.json")
        restored.append("tokenizer_config.json")
    return restored


def export_model(model_path: str | os.PathLike, out_dir: str | os.PathLike, *, adapter: str | os.PathLike | None = None,
                 prefix: str | os.PathLike | None = None, layout: str = "native", dtype=None, force: bool = False,
                 tokenizer_path: str | os.PathLike | None = None, base_path_override: str | None = None,
                 device: str = "cpu", max_shard_bytes: int = 2 * 1024**3) -> ExportResult:
    """Merge ``adapter`` (LoRA/DoRA, optional) into ``model_path`` and write a standalone folder.

    Without an adapter this re-exports the model, e.g. to convert an official
    ChatGLM3 checkpoint to the native layout. ``dtype=None`` keeps the base
    checkpoint's storage dtype. P-Tuning prefixes are refused with the options.
    """
    from .methods import detect_method
    from .models import resolve_dtype, save_model, write_generation_config
    from .tokenizer import find_tokenizer, load_tokenizer

    model_path, out_dir = Path(model_path), Path(out_dir)
    adapter = Path(adapter) if adapter is not None else None
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; known layouts: {', '.join(LAYOUTS)}")
    if adapter is not None and not adapter.is_dir():
        raise ExportError(f"{adapter}: adapter folder not found (expected adapter_config.json and "
                          "adapter_model.safetensors from training)")
    if prefix is not None or (adapter is not None and detect_method(adapter) == "ptuning"):
        raise ExportError(f"{prefix or adapter}: {PTUNING_ADVICE}")
    check_out_dir(out_dir, force=force, protected=[model_path, adapter])
    target = resolve_dtype(dtype, "cpu", None) if dtype is not None else default_dtype(model_path)
    tokenizer = load_tokenizer(find_tokenizer(tokenizer_path, model_path, adapter))

    model = load_merged(model_path, adapter, device=device, base_path_override=base_path_override)
    save_model(model, out_dir, layout=layout, dtype=target, max_shard_bytes=max_shard_bytes)
    tokenizer.save_pretrained(out_dir)
    write_generation_config(out_dir, tokenizer)
    copy_release_files(model_path if model_path.is_dir() else None, out_dir, layout)
    _write_provenance(out_dir, model_path, adapter, layout, target)
    return ExportResult(out_dir=out_dir, layout=layout, dtype=target, merged_adapter=adapter,
                        files=sorted(p.name for p in out_dir.iterdir()),
                        num_parameters=sum(p.numel() for p in model.parameters()))


def _write_provenance(out_dir: Path, model_path: Path, adapter: Path | None, layout: str, dtype) -> None:
    # Where a merged model came from is otherwise lost; a small side file keeps it.
    from . import __version__

    info = {"glmtune_version": __version__, "base_model": str(model_path),
            "merged_adapter": str(adapter) if adapter else None, "layout": layout,
            "dtype": str(dtype).replace("torch.", "")}
    (out_dir / "glmtune_export.json").write_text(json.dumps(info, indent=2) + "\n")
