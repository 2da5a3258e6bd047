"""``load_model`` / ``save_model``: ChatGLM3 or native GLM folders, or a named shape."""

from __future__ import annotations

import json
import os
import re
from functools import partial
from pathlib import Path

import torch
from transformers import Glm4Config, Glm4ForCausalLM, GlmConfig, GlmForCausalLM

from .checkpoint import (
    LazyTensor,
    checkpoint_dtype,
    iter_tensors,
    read_json,
    remove_weight_files,
    safetensors_header,
    save_sharded,
    weight_files,
)
from .convert import (
    CheckpointError,
    chatglm_key_to_glm,
    chatglm_layout_plan,
    GLM_VALUE_KINDS,
    check_config_values,
    chatglm_to_glm_config,
    fuse_qkv,
    glm_to_chatglm_config,
)
from ..families import FamilyError, detect_family
from .shapes import SHAPES, shape_config

# Key prefix of the official ChatGLM3 P-Tuning v2 prefix encoder's tensors in a checkpoint folder.
PREFIX_ENCODER_KEYS = "transformer.prefix_encoder."

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def resolve_dtype(dtype, device: str | torch.device, stored: torch.dtype | None) -> torch.dtype:
    """``None``/``"auto"``: the checkpoint's dtype on GPU, float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if torch.device(device).type == "cpu":
            return torch.float32
        return stored or torch.bfloat16
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise CheckpointError(f"unknown dtype {dtype!r}; use one of: auto, {', '.join(_DTYPES)}") from None


def read_model_config(folder: Path, family: str | None = None) -> tuple[str, GlmConfig]:
    """(layout, GlmConfig) of a model folder; layout is ``"chatglm3"`` or ``"native"``.

    ``family`` (``model.family``) forces how a THUDM config's ``rope_ratio`` applies when the folder does not tell.
    """
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder}: no config.json (expected a ChatGLM3 or GLM model folder)")
    cfg = read_json(config_file)
    model_type = cfg.get("model_type")
    if model_type == "chatglm":
        linear = _family_rope(folder, family) == "linear"
        return "chatglm3", chatglm_to_glm_config(cfg, source=str(config_file), linear_rope=linear)
    if model_type in ("glm", "glm4"):  # glm4: GLM-4-0414 / GLM-Z1, transformers' Glm4ForCausalLM
        check_config_values(cfg, GLM_VALUE_KINDS, str(config_file))
        cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version", "torch_dtype", "dtype")}
        try:
            config = (Glm4Config if model_type == "glm4" else GlmConfig)(**cfg)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"{config_file}: invalid GLM config ({type(exc).__name__}: {exc})") from None
        if config.num_attention_heads % config.num_key_value_heads:
            raise CheckpointError(f"{config_file}: num_attention_heads {config.num_attention_heads} is not a "
                                  f"multiple of num_key_value_heads {config.num_key_value_heads}")
        return "native", config
    raise CheckpointError(
        f"{config_file}: model_type {model_type!r} is not a ChatGLM ('chatglm'), GLM ('glm') or GLM-4-0414 ('glm4') model; "
        "glmtune loads only the GLM family"
    )


def _family_rope(folder: Path, family: str | None = None) -> str:
    """How the folder's family applies ``rope_ratio``: ChatGLM2-6B-32k divides positions ("linear"), ChatGLM3-32k and
    GLM-4 scale the base ("base", also when the family cannot be told: what glmtune always did)."""
    try:
        return detect_family(folder, family).rope
    except FamilyError:
        return "base"


_LAYER_INDEX = {"chatglm3": re.compile(r"^transformer\.encoder\.layers\.(\d+)\."),
                "native": re.compile(r"^model\.layers\.(\d+)\.")}


def check_layer_count(files: list[Path], layout: str, config: GlmConfig) -> None:
    """Compare the config's layer count with the layers the safetensors headers hold, before building anything.

    A damaged ``num_layers`` (say 10**9) would otherwise exhaust memory building the empty model.
    ``.bin`` shards have no cheap header; their tensors are checked while loading.
    """
    if not all(path.suffix == ".safetensors" for path in files):
        return
    layers = {int(m.group(1)) for path in files for name in safetensors_header(path)
              if (m := _LAYER_INDEX[layout].match(name))}
    if len(layers) != config.num_hidden_layers:
        key = "num_layers" if layout == "chatglm3" else "num_hidden_layers"
        raise CheckpointError(f"{files[0].parent / 'config.json'}: {key} is {config.num_hidden_layers}, but the "
                              f"weights hold {len(layers)} layers; fix {key} in the file")


def find_glm(model: torch.nn.Module) -> GlmForCausalLM:
    """The GlmForCausalLM (or GLM-4-0414's Glm4ForCausalLM) inside ``model`` (itself, or under a PEFT or P-Tuning wrapper)."""
    if isinstance(model, (GlmForCausalLM, Glm4ForCausalLM)):
        return model
    for module in model.modules():
        if isinstance(module, (GlmForCausalLM, Glm4ForCausalLM)):
            return module
    raise CheckpointError(f"expected a GLM causal LM (GlmForCausalLM), got {type(model).__name__}")


def model_class(config) -> type:
    """transformers' class for a config: Glm4ForCausalLM for GLM-4-0414's Glm4Config, else GlmForCausalLM."""
    return Glm4ForCausalLM if isinstance(config, Glm4Config) else GlmForCausalLM


def empty_model(config: GlmConfig) -> GlmForCausalLM:
    """A model whose weights live on the meta device (no memory), to be filled by ``assign``."""
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        return model_class(config)(config)


def _finish(model: GlmForCausalLM, device: str | torch.device) -> GlmForCausalLM:
    # inv_freq is a non-persistent buffer: never in a checkpoint, so rebuild it on the real device.
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    return model


def load_weights(model: GlmForCausalLM, files: list[Path], layout: str, dtype: torch.dtype, device, *,
                 skip: str | None = None, expected: dict | None = None, put=None) -> None:
    """Fill ``model`` shard by shard, checking every name and shape against its config.

    Tensors whose name starts with ``skip`` are not part of the model and are passed over. ``expected`` (name ->
    shape) and ``put`` (takes one shard's converted tensors) replace the model's own state-dict shapes and
    ``load_state_dict(assign=True)``, for models whose parameters are partitioned (DeepSpeed ZeRO-3).
    """
    if expected is None:
        expected = {k: v.shape for k, v in model.state_dict().items()}
    put = put or partial(model.load_state_dict, strict=False, assign=True)
    seen: set[str] = set()
    for path in files:
        part = {}
        for name, tensor in iter_tensors(path, dtype):
            if skip is not None and name.startswith(skip):
                continue
            pairs = chatglm_key_to_glm(name, tensor, model.config) if layout == "chatglm3" else [(name, tensor)]
            try:
                pairs = list(pairs)
            except CheckpointError as exc:
                raise CheckpointError(f"{path}: {exc}") from None
            for new_name, value in pairs:
                if new_name not in expected:
                    raise CheckpointError(f"{path}: unexpected tensor {name!r} for a {layout} GLM checkpoint")
                if tuple(value.shape) != tuple(expected[new_name]):
                    raise CheckpointError(
                        f"{path}: tensor {name!r} has shape {tuple(value.shape)}, "
                        f"but config.json implies {tuple(expected[new_name])}"
                    )
                value = value.to(device=device, dtype=dtype)
                # A q/k/v row slice kept as-is would pin the whole fused tensor and
                # make the parameters share storage (which safetensors refuses to save).
                part[new_name] = value.clone() if value._base is not None else value
                seen.add(new_name)
            del tensor, pairs
        put(part)
        del part
    missing = sorted(set(expected) - seen - ({"lm_head.weight"} if model.config.tie_word_embeddings else set()))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(f"{files[0].parent}: checkpoint is missing tensors: {shown}")


def random_model(name: str, *, dtype: torch.dtype, device, vocab_size: int | None = None, seed: int = 0):
    """A randomly initialised model of a named shape (transformers' own init)."""
    config = shape_config(name, vocab_size=vocab_size)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class(config)(config)
    finally:
        torch.set_default_dtype(previous)
    return _finish(model, device)


def prefix_length(path: str | os.PathLike) -> int | None:
    """``pre_seq_len`` of a folder whose config.json says it also holds a P-Tuning v2 prefix, else None.

    The official fine-tune demo (and ``glmtune export --prefix DIR --layout chatglm3``) writes the base
    model and the prefix encoder into one folder; the base loads without the prefix's tensors.
    """
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    try:
        length = read_json(config_file).get("pre_seq_len")
    except CheckpointError:
        return None
    return length if isinstance(length, int) and length > 0 else None


def load_model(
    path: str | os.PathLike,
    *,
    dtype=None,
    device: str | torch.device = "cpu",
    vocab_size: int | None = None,
    seed: int = 0,
    family: str | None = None,
) -> GlmForCausalLM:
    """Load a GLM-family base model natively, as transformers' ``GlmForCausalLM`` in eval mode.

    ``path`` is a ChatGLM3 folder (``model_type: "chatglm"``, converted on
    load), a native GLM folder (``model_type: "glm"``), or a named shape from
    :data:`glmtune.models.shapes.SHAPES` for random weights (``vocab_size`` and
    ``seed`` apply to shapes only). ``dtype=None`` keeps the checkpoint's dtype
    on GPU and uses float32 on CPU. A folder that also holds a P-Tuning prefix
    (``pre_seq_len`` in config.json) loads without it. To apply a fine-tuning
    result too, use :func:`glmtune.load_model` (``adapter=``, ``prefix=``). ``family`` forces the model family
    (``glmtune.families``) where the folder does not tell it (it decides how ChatGLM2-32k's rope_ratio applies).
    """
    folder = Path(path)
    if folder.is_dir():
        layout, config = read_model_config(folder, family)
        files = weight_files(folder)
        check_layer_count(files, layout, config)
        target = resolve_dtype(dtype, device, checkpoint_dtype(files))
        model = empty_model(config)
        skip = PREFIX_ENCODER_KEYS if prefix_length(folder) else None
        load_weights(model, files, layout, target, device, skip=skip)
        model = _finish(model, device)
        # As from_pretrained does: PEFT records it as the adapter's base_model_name_or_path.
        model.name_or_path = str(folder)
        return model
    if str(path) in SHAPES:
        return random_model(str(path), dtype=resolve_dtype(dtype, device, None), device=device,
                            vocab_size=vocab_size, seed=seed)
    raise CheckpointError(f"{path}: not a model folder and not a known shape (shapes: {', '.join(SHAPES)})")


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor if dtype is None else tensor.to(dtype)


def _fused(state: dict[str, torch.Tensor], parts: list[str], dtype: torch.dtype | None, config: GlmConfig) -> torch.Tensor:
    if len(parts) == 1:
        return _cast(state[parts[0]], dtype)
    return fuse_qkv(*(_cast(state[p], dtype) for p in parts), config)


def _lazy_state(state: dict[str, torch.Tensor], layout: str, dtype: torch.dtype | None,
                config: GlmConfig) -> dict[str, LazyTensor]:
    """What to write, by name: each tensor cast (and for chatglm3 fused) only when its shard is written."""
    if layout == "native":
        plan = {name: [name] for name in state}
    elif layout == "chatglm3":
        plan = chatglm_layout_plan(state)
    else:
        raise ValueError(f"unknown layout {layout!r}; use 'native' or 'chatglm3'")
    lazy = {}
    for name, parts in plan.items():
        size = (dtype or state[parts[0]].dtype).itemsize
        lazy[name] = LazyTensor(sum(state[p].numel() for p in parts) * size, partial(_fused, state, parts, dtype, config))
    return lazy


def save_model(model: GlmForCausalLM, out_dir: str | os.PathLike, *, layout: str = "native", dtype=None,
               max_shard_bytes: int = 2 * 1024**3, family: str | None = None) -> Path:
    """Write ``model`` as sharded safetensors in the ``native`` or ``chatglm3`` layout.

    ``family`` (``glmtune.families``) is recorded in config.json as ``glmtune_family``, so the folder's family
    is known without guessing. Streams: each shard is cast (and fused) and written before the next is
    made, so peak memory is the model plus one shard. Model weight files a
    previous write left in ``out_dir`` are removed first, so a folder never
    mixes layouts; other files stay, and callers decide whether ``out_dir`` may be reused.
    """
    out_dir = Path(out_dir)
    if layout == "chatglm3" and isinstance(model, Glm4ForCausalLM):
        raise CheckpointError("GLM-4-0414 models (Glm4ForCausalLM) have no THUDM layout: THUDM ships them in "
                              "transformers' own; use layout 'native'")
    target = resolve_dtype(dtype, "cpu", None) if dtype is not None else None
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    lazy = _lazy_state(state, layout, target, model.config)
    stored = str(target or next(iter(state.values())).dtype).replace("torch.", "")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_weight_files(out_dir)
    if layout == "native":
        model.config.save_pretrained(out_dir)
        cfg = json.loads((out_dir / "config.json").read_text())
        cfg.pop("_attn_implementation", None)
        cfg["torch_dtype"] = stored
    else:
        cfg = {**glm_to_chatglm_config(model.config), "torch_dtype": stored}
    if family:
        cfg["glmtune_family"] = family
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_sharded(lazy, out_dir, max_shard_bytes=max_shard_bytes)
    return out_dir


def write_generation_config(out_dir: str | os.PathLike, tokenizer) -> Path:
    """``generation_config.json`` whose eos list stops chat turns: the family's stop ids (ChatGLM3: eos, <|user|>,
    <|observation|>; GLM-4: <|endoftext|>, <|user|>, <|observation|>; ChatGLM2: eos)."""
    eos = list(tokenizer.stop_ids)
    path = Path(out_dir) / "generation_config.json"
    path.write_text(json.dumps({"eos_token_id": eos, "pad_token_id": tokenizer.pad_token_id}, indent=2) + "\n")
    return path
