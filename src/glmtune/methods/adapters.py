"""Applying saved LoRA adapters (glmtune/PEFT or official ChatGLM3 ones), resuming and merging them.

:mod:`.lora` prepares and saves; this module reads what was saved (it imports lora, never the reverse).

Official ChatGLM3 adapters target the fused ``query_key_value``; they are
converted exactly: ``lora_A`` is copied to each of q/k/v (they share the input)
and ``lora_B`` split by rows [heads*d, groups*d, groups*d], as the base weight
itself is split (see ``glmtune.models.convert``). ``base_model_name_or_path``
in ``adapter_config.json`` is never used to load anything: the base model is
the one passed in, and ``resize_token_embeddings`` is never called.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..models.checkpoint import iter_tensors
from ..models.convert import CheckpointError, fuse_qkv, qkv_split_sizes, split_qkv
from .errors import MethodError
from .lora import base_name, wrap_peft
from .options import OFFICIAL_MODULE_NAMES
from .ptuning import PrefixModel

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_OFFICIAL_KEY = re.compile(r"^base_model\.model\.transformer\.encoder\.layers\.(\d+)\.(self_attention|mlp)\."
                           r"(query_key_value|dense|dense_h_to_4h|dense_4h_to_h)\.(lora_A|lora_B|lora_magnitude_vector)"
                           r"(\.weight)?$")
# One text for every place that refuses to merge a prefix (export, merge_adapter): what works instead.
PTUNING_MERGE_ADVICE = (
    "a P-Tuning v2 prefix cannot be merged into the weights: it adds key/value vectors in front of every "
    "sequence instead of changing a weight matrix. What works: (1) use it as it is with glmtune: "
    "`glmtune chat/serve/eval --model BASE --prefix DIR`; (2) for THUDM's own code: "
    "`glmtune export --model BASE --prefix DIR --layout chatglm3 --out OUT` writes the checkpoint folder the "
    "official finetune_demo/inference_hf.py loads (base weights + prefix encoder + pre_seq_len in config.json); "
    "(3) train a LoRA adapter instead (method: lora), which merges into one model"
)
_NATIVE_PARENT = {"query_key_value": "self_attn", "dense": "self_attn", "dense_h_to_4h": "mlp", "dense_4h_to_h": "mlp"}


def adapter_weights_file(folder: Path) -> Path:
    for name in ADAPTER_FILES:
        if (folder / name).is_file():
            return folder / name
    raise MethodError(f"{folder}: adapter weights missing (expected {' or '.join(ADAPTER_FILES)})")


def read_adapter_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise MethodError(f"{path}: file not found (a LoRA adapter folder holds adapter_config.json "
                          "and adapter_model.safetensors, as PEFT saves them)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MethodError(f"{path}: invalid JSON ({exc})") from None
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        hint = " (a P-Tuning v2 prefix loads with --prefix / prefix=DIR)" if "PREFIX" in peft_type else ""
        raise MethodError(f"{path}: peft_type {peft_type!r} is not supported as an adapter; only LORA{hint}")
    if cfg.get("bias", "none") != "none":
        raise MethodError(f"{path}: bias {cfg['bias']!r} adapters also change base biases; only bias 'none' is supported")
    return cfg


def read_adapter_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        return dict(iter_tensors(path))
    except CheckpointError as exc:
        raise MethodError(str(exc)) from None


def is_official(cfg: dict, state: dict[str, torch.Tensor]) -> bool:
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    return any(t in OFFICIAL_MODULE_NAMES for t in targets) or any(".transformer.encoder." in k for k in state)


def convert_official_state(state: dict[str, torch.Tensor], config, source: Path) -> dict[str, torch.Tensor]:
    """Native PEFT keys for an official ChatGLM3 LoRA state dict (exact: A copied, B split by rows)."""
    out: dict[str, torch.Tensor] = {}
    sizes = qkv_split_sizes(config)
    for name, tensor in state.items():
        m = _OFFICIAL_KEY.match(name)
        if not m:
            raise MethodError(f"{source}: unexpected tensor {name!r} in an official ChatGLM3 LoRA adapter")
        layer, _, module, kind, suffix = m.groups()
        suffix = suffix or ""
        prefix = f"base_model.model.model.layers.{layer}.{_NATIVE_PARENT[module]}."
        natives = OFFICIAL_MODULE_NAMES[module]
        if module != "query_key_value":
            out[f"{prefix}{natives[0]}.{kind}{suffix}"] = tensor
        elif kind == "lora_A":
            for proj in natives:
                out[f"{prefix}{proj}.{kind}{suffix}"] = tensor.clone()
        else:
            if tensor.shape[0] != sum(sizes):
                raise MethodError(
                    f"{source}: {name} has {tensor.shape[0]} rows, but this base model's query_key_value has "
                    f"{sum(sizes)}; the adapter was trained for a different base model shape"
                )
            # B's rows are ordered like the fused weight's (interleaved per head without multi-query).
            for proj, part in zip(natives, split_qkv(tensor, config)):
                out[f"{prefix}{proj}.{kind}{suffix}"] = part.contiguous()
    return out


def peft_config_from(cfg: dict, official: bool, base_path: str | None):
    # deferred: peft is heavy
    from peft import LoraConfig

    known = {f.name for f in dataclasses.fields(LoraConfig)}
    values = {k: v for k, v in cfg.items() if k in known and k not in ("peft_type", "auto_mapping", "revision")}
    if official:
        targets = cfg.get("target_modules") or []
        targets = [targets] if isinstance(targets, str) else targets
        values["target_modules"] = [n for t in targets for n in OFFICIAL_MODULE_NAMES.get(t, [t])]
    values["base_model_name_or_path"] = base_path
    values["inference_mode"] = True
    return LoraConfig(**values)


def check_shapes(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Compare adapter tensors with the layers they attach to, before PEFT sees them."""
    modules = dict(model.named_modules())
    for name, tensor in state.items():
        m = re.match(r"^base_model\.model\.(.+)\.(lora_A|lora_B|lora_magnitude_vector)(?:\.weight)?$", name)
        if not m or m.group(1) not in modules:
            raise MethodError(f"{source}: tensor {name!r} matches no layer of this base model; "
                              "the adapter was trained for a different model")
        layer = modules[m.group(1)]
        kind = m.group(2)
        size = layer.in_features if kind == "lora_A" else layer.out_features
        got = tensor.shape[1] if kind == "lora_A" else tensor.shape[0]
        if got != size:
            raise MethodError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, but the base layer {m.group(1)} is "
                f"{layer.in_features} -> {layer.out_features}; the adapter was trained for a different base model shape"
            )


def apply_adapter(model: nn.Module, adapter_dir: str | os.PathLike, *, base_path_override: str | None = None):
    """``model`` with the LoRA adapter in ``adapter_dir`` applied (a PEFT model in eval mode, nothing trainable).

    ``base_path_override`` is only recorded in the PEFT config (for a later
    ``save_pretrained``); the adapter's own ``base_model_name_or_path`` is ignored.
    """
    from peft import set_peft_model_state_dict  # heavy dependency: only loading an adapter needs PEFT

    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise MethodError(f"{folder}: adapter folder not found")
    cfg = read_adapter_config(folder)
    path = adapter_weights_file(folder)
    state = read_adapter_state(path)
    official = is_official(cfg, state)
    if official:
        state = convert_official_state(state, model.config, path)
    check_shapes(model, state, path)
    # PEFT records the base model's own name here; the override replaces it afterwards.
    peft_model = wrap_peft(model, peft_config_from(cfg, official, base_name(model)))
    if base_path_override is not None:
        peft_model.peft_config["default"].base_model_name_or_path = str(base_path_override)
    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise MethodError(f"{path}: adapter is missing tensors, e.g. {missing[0]}")
    peft_model.requires_grad_(False)
    peft_model.eval()
    return peft_model


def load_lora_state(model: nn.Module, folder: str | os.PathLike) -> None:
    """Resume: copy a saved adapter into an already prepared PEFT model, in place."""
    from peft import set_peft_model_state_dict  # heavy dependency: only loading an adapter needs PEFT

    path = adapter_weights_file(Path(folder))
    state = read_adapter_state(path)
    result = set_peft_model_state_dict(model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise MethodError(f"{path}: does not match the prepared LoRA model "
                          f"(unexpected {result.unexpected_keys[:3]}, missing {missing[:3]})")


def merge_adapter(model: nn.Module):
    """A plain ``GlmForCausalLM`` with LoRA/DoRA merged into its weights (for export)."""
    # deferred: peft is heavy; transformers is heavy
    from peft import PeftModel
    from transformers import Glm4ForCausalLM, GlmForCausalLM

    if isinstance(model, PrefixModel):
        raise MethodError(PTUNING_MERGE_ADVICE)
    if isinstance(model, PeftModel):
        merged = model.merge_and_unload()
        merged.eval()
        return merged
    if isinstance(model, (GlmForCausalLM, Glm4ForCausalLM)):  # Glm4: GLM-4-0414
        return model
    raise MethodError(f"cannot merge a {type(model).__name__}; expected a LoRA (PEFT) model or GlmForCausalLM")


# --- native (glmtune/PEFT) LoRA -> official ChatGLM3 layout -------------------------------------------------

_NATIVE_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\."
                         r"(q_proj|k_proj|v_proj|o_proj|gate_up_proj|down_proj)\.(lora_A|lora_B)\.weight$")
_OFFICIAL_OF = {native: official for official, natives in OFFICIAL_MODULE_NAMES.items() for native in natives}
_OFFICIAL_PARENT = {"query_key_value": "self_attention", "dense": "self_attention",
                    "dense_h_to_4h": "mlp", "dense_4h_to_h": "mlp"}
# The fields every PEFT release since 0.4 reads (the official demo pins 0.7-0.10); newer
# fields such as use_dora, use_rslora or layer_replication make older releases fail on load.
OFFICIAL_CONFIG_FIELDS = ("peft_type", "task_type", "inference_mode", "base_model_name_or_path", "revision", "r",
                          "target_modules", "lora_alpha", "lora_dropout", "fan_in_fan_out", "bias",
                          "modules_to_save", "init_lora_weights", "layers_to_transform", "layers_pattern")


def lora_scaling(cfg: dict, source: Path) -> float:
    """The factor PEFT multiplies B·A by: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise MethodError(f"{source}: per-module rank_pattern/alpha_pattern cannot be exported to the official "
                          "layout; train with one rank and alpha for all modules")
    r, alpha = cfg.get("r", 8), cfg.get("lora_alpha", 8)
    return alpha / r**0.5 if cfg.get("use_rslora") else alpha / r


def _native_lora_modules(state: dict[str, torch.Tensor], source: Path) -> dict[tuple[int, str], dict[str, torch.Tensor]]:
    """(layer, native module) -> {"lora_A": A, "lora_B": B}; refuses what the official layout cannot hold."""
    modules: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        m = _NATIVE_KEY.match(name)
        if not m:
            raise MethodError(f"{source}: tensor {name!r} cannot be expressed in the official ChatGLM3 layout "
                              "(only LoRA A/B of q/k/v/o_proj, gate_up_proj and down_proj can)")
        modules.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = tensor
    return modules


def official_lora_state(cfg: dict, state: dict[str, torch.Tensor], config,
                        source: Path) -> tuple[dict[str, torch.Tensor], int]:
    """Official ChatGLM3 LoRA tensors with the same update as a native adapter, and their common rank.

    q/k/v fuse into ``query_key_value``: A stacked [A_q; A_k; A_v] and B
    block-diagonal, so B'·A' = [B_q·A_q; B_k·A_k; B_v·A_v]; rows follow the
    fused weight's order (``fuse_qkv``, as the base weight is fused).
    Every module is zero-padded to one rank, since the PEFT releases the
    official demo pins read a single ``r``; zero rows add nothing to B·A.
    """
    if cfg.get("use_dora"):
        raise MethodError(f"{source}: a DoRA adapter cannot be written in the official ChatGLM3 layout (the "
                          "official code applies plain LoRA); export it merged instead (drop --adapter-only)")
    if cfg.get("modules_to_save"):
        raise MethodError(f"{source}: modules_to_save {cfg['modules_to_save']} cannot be written in the official "
                          "LoRA layout; export the model merged instead (drop --adapter-only)")
    r = int(cfg.get("r", 8))
    sizes = dict(zip(("q_proj", "k_proj", "v_proj"), qkv_split_sizes(config)))
    modules = _native_lora_modules(state, source)
    fused: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for (layer, native), ab in sorted(modules.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise MethodError(f"{source}: layer {layer} {native} lacks lora_A or lora_B")
        _check_lora_shapes(ab, native, r, config, f"{source}: layer {layer}")
        if native not in sizes:
            fused[(layer, _OFFICIAL_OF[native])] = (ab["lora_A"], ab["lora_B"])
    for layer in sorted({layer for layer, native in modules if native in sizes}):
        parts = {n: modules[(layer, n)] for n in sizes if (layer, n) in modules}
        fused[(layer, "query_key_value")] = _fused_qkv_lora(parts, sizes, r, config)
    rank = max(a.shape[0] for a, _ in fused.values())
    out: dict[str, torch.Tensor] = {}
    for (layer, official), (a, b) in fused.items():
        key = f"base_model.model.transformer.encoder.layers.{layer}.{_OFFICIAL_PARENT[official]}.{official}"
        out[f"{key}.lora_A.weight"] = torch.cat([a, a.new_zeros(rank - a.shape[0], a.shape[1])]).contiguous()
        out[f"{key}.lora_B.weight"] = torch.cat([b, b.new_zeros(b.shape[0], rank - b.shape[1])], dim=1).contiguous()
    return out, rank


def _check_lora_shapes(ab: dict[str, torch.Tensor], native: str, r: int, config, where: str) -> None:
    """A is (r, in) and B is (out, r) for the base layer; a wrong base model is named, not mis-written."""
    heads_d = config.num_attention_heads * config.head_dim
    kv_d = config.num_key_value_heads * config.head_dim
    hidden, ffn = config.hidden_size, config.intermediate_size
    in_out = {"q_proj": (hidden, heads_d), "k_proj": (hidden, kv_d), "v_proj": (hidden, kv_d),
              "o_proj": (heads_d, hidden), "gate_up_proj": (hidden, 2 * ffn), "down_proj": (ffn, hidden)}[native]
    got = (tuple(ab["lora_A"].shape), tuple(ab["lora_B"].shape))
    if got != ((r, in_out[0]), (in_out[1], r)):
        raise MethodError(f"{where} {native} has lora_A {got[0]} and lora_B {got[1]}, but r {r} on this base model "
                          f"needs {(r, in_out[0])} and {(in_out[1], r)}; pass the base model the adapter was trained on")


def _fused_qkv_lora(parts: dict[str, dict[str, torch.Tensor]], sizes: dict[str, int], r: int,
                    config) -> tuple[torch.Tensor, torch.Tensor]:
    """(A', B') of one fused query_key_value: A stacked, B block-diagonal (zero rows for an untargeted part)."""
    a = torch.cat([ab["lora_A"] for ab in parts.values()], dim=0)
    blocks, column = [], 0
    for name, rows in sizes.items():
        block = a.new_zeros(rows, a.shape[0])
        if name in parts:
            block[:, column:column + r] = parts[name]["lora_B"]
            column += r
        blocks.append(block)
    return a, fuse_qkv(*blocks, config)


def official_lora_config(cfg: dict, rank: int, scaling: float, targets: list[str], base_path: str | None) -> dict:
    """``adapter_config.json`` for the official layout: only fields old PEFT reads; alpha keeps the scaling."""
    alpha = scaling * rank
    values = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "inference_mode": True, "base_model_name_or_path": base_path,
        "revision": None, "r": rank, "target_modules": targets,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": cfg.get("lora_dropout", 0.0), "fan_in_fan_out": False, "bias": "none",
        "modules_to_save": None, "init_lora_weights": True, "layers_to_transform": cfg.get("layers_to_transform"),
        "layers_pattern": cfg.get("layers_pattern"),
    }
    return {k: values[k] for k in OFFICIAL_CONFIG_FIELDS}


def save_official_lora(adapter_dir: str | os.PathLike, config, out_dir: str | os.PathLike, *,
                       base_path: str | None, dtype: torch.dtype | None = None) -> list[Path]:
    """Write the adapter in ``adapter_dir`` as PEFT saves a LoRA for THUDM's ChatGLM3 code (same update).

    ``config`` is the base model's GlmConfig (row sizes of the fused layer);
    ``dtype`` None keeps the adapter's own dtype.
    """

    folder, out = Path(adapter_dir), Path(out_dir)
    cfg = read_adapter_config(folder)
    path = adapter_weights_file(folder)
    state = read_adapter_state(path)
    scaling = lora_scaling(cfg, folder / "adapter_config.json")
    if is_official(cfg, state):
        state = convert_official_state(state, config, path)
    state, rank = official_lora_state(cfg, state, config, path)
    present = {k.split(".")[-3] for k in state}
    targets = [name for name in OFFICIAL_MODULE_NAMES if name in present]
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config_json = official_lora_config(cfg, rank, scaling, targets, base_path)
    (out / "adapter_config.json").write_text(json.dumps(config_json, indent=2) + "\n")
    return [out / "adapter_model.safetensors", out / "adapter_config.json"]
