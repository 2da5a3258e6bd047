"""Export a fine-tuning result as a folder other tools load, in glmtune's or THUDM's layout.

* merged model (LoRA/DoRA merged in, or a freeze/full result, or just a model):
  sharded safetensors with an index, ``config.json``, the tokenizer files and a
  ``generation_config.json`` whose eos list stops chat turns ([eos,
  ``<|user|>``, ``<|observation|>``]). ``native`` is transformers' GLM layout,
  with a standard ``tokenizer.json`` + chat template (``hf_tokenizer``) so
  ``AutoTokenizer``, vLLM and SGLang need no remote code;
  ``chatglm3`` is THUDM's layout for the official demos (its ``auto_map`` and
  THUDM's ``tokenizer_config.json`` kept so ``trust_remote_code`` loading works).
* ``adapter_only``: a LoRA adapter as PEFT saves one for THUDM's ChatGLM3 code
  (fused ``query_key_value``, same update; see ``methods.adapters.save_official_lora``).
* a P-Tuning v2 prefix with ``layout="chatglm3"``: the checkpoint folder the
  official ``finetune_demo/inference_hf.py`` loads (a whole chatglm3-layout
  model + ``transformer.prefix_encoder.*`` + ``pre_seq_len`` in config.json).

Every export goes through :class:`glmtune.export_folder.StagedExport`: nothing
is written into an input folder, and ``--force`` replaces only what a previous
glmtune export recorded in ``glmtune_export.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .export_folder import MANIFEST, ExportError, StagedExport, check_out_dir
from .methods.adapters import PTUNING_MERGE_ADVICE, save_official_lora
from . import __version__
from .methods import load_trained, merge_adapter, detect_method, apply_prefix
from .methods.ptuning_io import add_prefix_to_checkpoint
from .models import (load_model, resolve_dtype, save_model, write_generation_config, CheckpointError, SHAPES,
                     read_model_config, shape_config)
from .models.checkpoint import checkpoint_dtype, weight_files
from .families import find_tokenizer, load_tokenizer

__all__ = ["ExportError", "ExportResult", "check_out_dir", "export_model", "export_tokenizer", "parse_size"]

LAYOUTS = ("native", "chatglm3")
# Files of the official ChatGLM3 release that make its remote code and license
# travel with a chatglm3-layout export (copied as files, never imported).
_CHATGLM3_CODE_FILES = ("configuration_chatglm.py", "modeling_chatglm.py", "tokenization_chatglm.py",
                        "quantization.py")
_LICENSE_FILES = ("MODEL_LICENSE", "LICENSE", "LICENSE.txt", "NOTICE")
# THUDM/chatglm3-6b's config.json auto_map and tokenizer_config.json, for sources that lack them.
OFFICIAL_AUTO_MAP = {
    "AutoConfig": "configuration_chatglm.ChatGLMConfig",
    "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
}
OFFICIAL_TOKENIZER_CONFIG = {
    "name_or_path": "THUDM/chatglm3-6b", "remove_space": False, "do_lower_case": False,
    "tokenizer_class": "ChatGLMTokenizer", "padding_side": "left",
    "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
}
# THUDM's ChatGLMTokenizer defines these as read-only properties: a tokenizer_config.json
# (or special_tokens_map.json) that sets them makes it fail with "property ... has no setter".
_TOKENIZER_PROPERTIES = ("eos_token", "pad_token", "unk_token")


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    out_dir: Path
    layout: str
    dtype: torch.dtype | None
    merged_adapter: Path | None
    files: list[str] = field(default_factory=list)
    num_parameters: int = 0
    kind: str = "model"
    """"model" (a standalone model), "adapter" (official LoRA adapter), "ptuning" (official P-Tuning checkpoint)
    or "tokenizer" (tokenizer files only)."""
    replaced: list[str] = field(default_factory=list)
    """Files of a previous glmtune export that this one replaced or removed (--force)."""
    notes: list[str] = field(default_factory=list)
    """What the user still has to know (e.g. THUDM's code files to add for trust_remote_code)."""


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
    model = load_model(model_path, dtype="fp32", device=device)
    if adapter is None:
        return model
    return merge_adapter(load_trained(model, adapter, base_path_override=base_path_override))


def copy_release_files(source: Path | None, out_dir: Path, layout: str) -> list[str]:
    """License files always; for chatglm3 also THUDM's code files, auto_map and tokenizer config (see below)."""
    copied = []
    if source is not None and source.is_dir():
        names = list(_LICENSE_FILES) + (list(_CHATGLM3_CODE_FILES) if layout == "chatglm3" else [])
        for name in names:
            if (source / name).is_file():
                shutil.copyfile(source / name, out_dir / name)
                copied.append(name)
    if layout == "chatglm3":
        write_official_configs(source if source is not None and source.is_dir() else None, out_dir)
    return copied


def _official_tokenizer_config(source: Path | None) -> dict:
    """The source's THUDM tokenizer_config.json when THUDM's class can load it, else THUDM's own."""
    path = source / "tokenizer_config.json" if source is not None else None
    if path is not None and path.is_file():
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cfg = None
        if isinstance(cfg, dict) and "auto_map" in cfg and not any(k in cfg for k in _TOKENIZER_PROPERTIES):
            return cfg
    return dict(OFFICIAL_TOKENIZER_CONFIG)


def write_official_configs(source: Path | None, out_dir: Path) -> None:
    """Make a chatglm3-layout folder loadable by THUDM's remote code (``trust_remote_code=True``).

    config.json gets the source's ``auto_map`` (THUDM's when the source has
    none); tokenizer_config.json is the source's THUDM one or THUDM's own, never
    glmtune's, whose eos/pad keys THUDM's tokenizer class cannot set.
    """
    original = {}
    if source is not None and (source / "config.json").is_file():
        try:
            original = json.loads((source / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            original = {}
    cfg = json.loads((out_dir / "config.json").read_text())
    cfg["auto_map"] = original.get("auto_map") if isinstance(original.get("auto_map"), dict) else OFFICIAL_AUTO_MAP
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if (out_dir / "tokenizer.model").is_file():
        tokenizer_cfg = _official_tokenizer_config(source)
        (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_cfg, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "special_tokens_map.json").unlink(missing_ok=True)  # staged by us; THUDM's class would fail on it


def _code_note(model_path: Path, out_dir: Path) -> list[str]:
    missing = [n for n in _CHATGLM3_CODE_FILES[:3] if not (model_path / n).is_file()] if model_path.is_dir() else []
    if not missing:
        return []
    return [f"{model_path} has no {', '.join(missing)}: copy THUDM's files (from the official THUDM/chatglm3-6b "
            f"folder) into {out_dir} before loading it with trust_remote_code=True"]


def export_model(model_path: str | os.PathLike, out_dir: str | os.PathLike, *, adapter: str | os.PathLike | None = None,
                 prefix: str | os.PathLike | None = None, layout: str | None = None, adapter_only: bool = False,
                 dtype=None, force: bool = False, tokenizer_path: str | os.PathLike | None = None,
                 base_path_override: str | None = None, device: str = "cpu",
                 max_shard_bytes: int = 2 * 1024**3) -> ExportResult:
    """Write ``model_path`` (+ ``adapter`` merged, or ``prefix``) as a folder other tools load.

    ``layout`` is ``"native"`` (default) or ``"chatglm3"`` (default with
    ``adapter_only``). ``adapter_only`` writes a LoRA adapter in THUDM's layout
    instead of a merged model; a P-Tuning ``prefix`` (or P-Tuning result given
    as ``adapter``) needs ``layout="chatglm3"``. ``dtype=None`` keeps the base
    checkpoint's storage dtype (the adapter's for ``adapter_only``).
    """
    model_path, out_dir = Path(model_path), Path(out_dir)
    adapter = Path(adapter) if adapter is not None else None
    layout = layout or ("chatglm3" if adapter_only else "native")
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; known layouts: {', '.join(LAYOUTS)}")
    if adapter is not None and not adapter.is_dir():
        raise ExportError(f"{adapter}: adapter folder not found (expected adapter_config.json and "
                          "adapter_model.safetensors from training)")
    if adapter is not None and prefix is None and detect_method(adapter) == "ptuning":
        adapter, prefix = None, adapter
    method = detect_method(adapter) if adapter is not None else None
    _check_request(layout, adapter_only, adapter, prefix, method)
    check_out_dir(out_dir, force=force, inputs={"--model": model_path, "--adapter": adapter, "--prefix": prefix,
                                                "--tokenizer": tokenizer_path, "--base-path": base_path_override})
    kind = "adapter" if adapter_only else "ptuning" if prefix is not None else "model"
    provenance = _provenance(model_path, adapter, prefix, layout, kind)
    with StagedExport(out_dir, provenance) as stage:
        if kind == "adapter":
            result = _export_official_adapter(model_path, adapter, stage.path, dtype, base_path_override)
        else:
            result = _export_model(model_path, adapter, prefix, stage.path, layout=layout, dtype=dtype,
                                   tokenizer_path=tokenizer_path, base_path_override=base_path_override,
                                   device=device, max_shard_bytes=max_shard_bytes)
        provenance["dtype"] = str(result.dtype).replace("torch.", "")
    result.out_dir, result.kind, result.files, result.replaced = out_dir, kind, stage.files, stage.replaced
    result.notes = [n.replace(str(stage.path), str(out_dir)) for n in result.notes]
    return result


def _check_request(layout: str, adapter_only: bool, adapter: Path | None, prefix, method: str | None) -> None:
    if prefix is not None and adapter is not None:
        raise ExportError(f"give either --adapter ({adapter}) or --prefix ({prefix}), not both: a model is "
                          "fine-tuned by one method at a time")
    if prefix is not None and adapter_only:
        raise ExportError(f"{prefix}: --adapter-only does not apply to a P-Tuning prefix: glmtune's prefix folder "
                          "already is the official prefix-only format (prefix_encoder.safetensors + config.json); "
                          "drop --adapter-only and use --layout chatglm3 for the checkpoint folder that THUDM's "
                          "inference_hf.py loads")
    if prefix is not None and layout != "chatglm3":
        raise ExportError(f"{prefix}: {PTUNING_MERGE_ADVICE}")
    if adapter_only and adapter is None:
        raise ExportError("--adapter-only needs --adapter LORA_DIR (the LoRA result to convert)")
    if adapter_only and layout != "chatglm3":
        raise ExportError(f"{adapter}: --adapter-only --layout native has nothing to do: a glmtune LoRA folder "
                          "already is a PEFT adapter for transformers' GLM; use it as it is, or pass --layout "
                          "chatglm3 for THUDM's layout")
    if adapter_only and method != "lora":
        raise ExportError(f"{adapter}: --adapter-only converts LoRA adapters, but this folder holds a {method} "
                          "result; export it merged (drop --adapter-only)")


def _export_model(model_path: Path, adapter: Path | None, prefix: Path | None, stage: Path, *, layout: str,
                  dtype, tokenizer_path, base_path_override, device: str, max_shard_bytes: int) -> ExportResult:
    """A standalone model folder (adapter merged), or an official P-Tuning checkpoint (prefix added)."""
    target = resolve_dtype(dtype, "cpu", None) if dtype is not None else default_dtype(model_path)
    tokenizer = load_tokenizer(find_tokenizer(tokenizer_path, model_path, adapter, prefix))
    model = load_merged(model_path, adapter, device=device, base_path_override=base_path_override)
    with_prefix = apply_prefix(model, prefix) if prefix is not None else None
    save_model(model, stage, layout=layout, dtype=target, max_shard_bytes=max_shard_bytes,
               family=tokenizer.family_name)
    if with_prefix is not None:
        add_prefix_to_checkpoint(with_prefix, stage, dtype=target)
    tokenizer.save_pretrained(stage)
    if layout == "native":  # chatglm3 keeps THUDM's tokenizer files (copy_release_files)
        tokenizer.save_hf(stage)
    write_generation_config(stage, tokenizer)
    copy_release_files(model_path if model_path.is_dir() else None, stage, layout)
    return ExportResult(out_dir=stage, layout=layout, dtype=target, merged_adapter=adapter,
                        num_parameters=sum(p.numel() for p in model.parameters()),
                        notes=_code_note(model_path, stage) if layout == "chatglm3" else [])


def export_tokenizer(source: str | os.PathLike, out_dir: str | os.PathLike, *, force: bool = False) -> ExportResult:
    """Only the tokenizer files of a native export (for users who keep their weights).

    ``tokenizer.model``, ``tokenizer.json`` + ``tokenizer_config.json`` (chat template) and
    ``generation_config.json`` (chat stop ids), with the same safety rules as :func:`export_model`.
    """
    source, out_dir = Path(source), Path(out_dir)
    tokenizer = load_tokenizer(find_tokenizer(source, hint="give a model folder holding tokenizer.model"))
    check_out_dir(out_dir, force=force, inputs={"--tokenizer-only": source})
    provenance = _provenance(source, None, None, "native", "tokenizer")
    with StagedExport(out_dir, provenance) as stage:
        tokenizer.save_pretrained(stage.path)
        tokenizer.save_hf(stage.path)
        write_generation_config(stage.path, tokenizer)
        copy_release_files(source if source.is_dir() else None, stage.path, "native")
    return ExportResult(out_dir=out_dir, layout="native", dtype=None, merged_adapter=None, kind="tokenizer",
                        files=stage.files, replaced=stage.replaced)


def _model_config(model_path: Path):
    if model_path.is_dir():
        return read_model_config(model_path)
    if str(model_path) in SHAPES:
        return "native", shape_config(str(model_path))
    raise CheckpointError(f"{model_path}: not a model folder and not a known shape (shapes: {', '.join(SHAPES)})")


def _export_official_adapter(model_path: Path, adapter: Path, stage: Path, dtype, base_path_override) -> ExportResult:
    """A LoRA adapter as PEFT saves one for THUDM's ChatGLM3 code; the base model's config gives the shapes."""
    base_layout, config = _model_config(model_path)
    target = resolve_dtype(dtype, "cpu", None) if dtype is not None else None
    base = base_path_override or (str(model_path.resolve()) if model_path.is_dir() else str(model_path))
    save_official_lora(adapter, config, stage, base_path=base, dtype=target)
    notes = []
    if base_layout != "chatglm3" and base_path_override is None:
        notes.append(f"the adapter records {base} as its base model, which is not a THUDM ChatGLM3 folder; "
                     "THUDM's code loads the base from there: pass --base-path with the official chatglm3-6b "
                     "folder (or hub name) the adapter was trained on")
    return ExportResult(out_dir=stage, layout="chatglm3", dtype=target, merged_adapter=None, notes=notes)


def _provenance(model_path: Path, adapter: Path | None, prefix: Path | None, layout: str, kind: str) -> dict:
    # Where a result came from is otherwise lost; the manifest keeps it beside the list of files written.
    return {"glmtune_version": __version__, "kind": kind, "base_model": str(model_path),
            "merged_adapter" if kind == "model" else "adapter": str(adapter or prefix) if adapter or prefix else None,
            "layout": layout}
