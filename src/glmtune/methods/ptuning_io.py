"""Reading and writing P-Tuning v2 prefixes in the official on-disk format.

Saved folder (what the official demo's checkpoints contain, minus the 12 GB
of frozen weights)::

    prefix_encoder.safetensors   transformer.prefix_encoder.embedding.weight
                                 (+ transformer.prefix_encoder.trans.{0,2}.{weight,bias} with projection)
    config.json                  {"pre_seq_len": P, "prefix_projection": false, ...}

:func:`apply_prefix` also reads ``.bin`` prefix weights (``weights_only``) and
whole official P-Tuning checkpoint folders (config.json with ``pre_seq_len``,
weights holding only the prefix encoder keys or the whole model).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..models import find_glm
from ..models.checkpoint import INDEX_FILES, iter_tensors, safetensors_header, weight_files
from ..models.convert import CheckpointError
from ..models.loading import PREFIX_ENCODER_KEYS as OFFICIAL_PREFIX
from .errors import MethodError
from .options import PrefixOptions
from .ptuning import PrefixModel, kv_size

PREFIX_FILE = "prefix_encoder.safetensors"
_PREFIX_FILE_CANDIDATES = ("prefix_encoder.safetensors", "prefix_encoder.bin", "pytorch_model.bin",
                           "model.safetensors")


def _indexed_prefix_shards(folder: Path) -> list[Path]:
    """Shards of a whole sharded checkpoint that the index says hold prefix encoder keys (skips the rest)."""
    for index in INDEX_FILES:
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text(encoding="utf-8")).get("weight_map") or {}
            except (OSError, ValueError, AttributeError):
                return []
            names = dict.fromkeys(v for k, v in weight_map.items() if "prefix_encoder." in k)
            return [folder / n for n in names if (folder / n).is_file()]
    return []


def prefix_weight_files(folder: Path) -> list[Path]:
    """Files that may hold the prefix encoder, most specific first."""
    found = [folder / name for name in _PREFIX_FILE_CANDIDATES if (folder / name).is_file()]
    found = found or _indexed_prefix_shards(folder)
    if not found:
        try:
            found = weight_files(folder)
        except CheckpointError:
            found = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not found:
        raise MethodError(
            f"{folder}: no prefix weights found (expected {PREFIX_FILE}, or a .bin / safetensors file "
            f"holding {OFFICIAL_PREFIX}embedding.weight)"
        )
    return found


def _prefix_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Prefix encoder tensors of one file, keys relative to the encoder; other tensors are not read."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k.split("prefix_encoder.", 1)[1]: f.get_tensor(k) for k in f.keys() if "prefix_encoder." in k}
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return {k.split("prefix_encoder.", 1)[1]: t for k, t in iter_tensors(path) if "prefix_encoder." in k}


def read_prefix_state(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The prefix encoder tensors (keys relative to the encoder) and the file they came from."""
    files = prefix_weight_files(folder)
    for path in files:
        try:
            state = _prefix_tensors(path)
        except CheckpointError as exc:
            raise MethodError(str(exc)) from None
        if state:
            return state, path
    names = ", ".join(p.name for p in files)
    raise MethodError(f"{folder}: {names} hold no prefix encoder tensors ({OFFICIAL_PREFIX}embedding.weight)")


def read_prefix_config(folder: Path) -> dict:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise MethodError(
            f"{folder}: no config.json; a P-Tuning v2 folder needs config.json with pre_seq_len "
            "(and prefix_projection), as the official demo writes it"
        )
    try:
        cfg = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MethodError(f"{config_file}: invalid JSON ({exc})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("pre_seq_len"), int):
        raise MethodError(f"{config_file}: expected an integer 'pre_seq_len' (this is not a P-Tuning v2 folder)")
    return cfg


def options_for(cfg: dict, state: dict[str, torch.Tensor], source: Path) -> PrefixOptions:
    projection = bool(cfg.get("prefix_projection", False))
    if projection and "trans.0.weight" not in state:
        raise MethodError(f"{source}: config says prefix_projection: true but the file has no trans.* weights")
    hidden = state["trans.0.weight"].shape[0] if projection else None
    return PrefixOptions(num_virtual_tokens=cfg["pre_seq_len"], prefix_projection=projection,
                         prefix_hidden_size=hidden)


def check_prefix_shape(state: dict[str, torch.Tensor], options: PrefixOptions, config, source: Path) -> None:
    weight = state.get("embedding.weight")
    if weight is None:
        raise MethodError(f"{source}: missing {OFFICIAL_PREFIX}embedding.weight")
    expected = (options.num_virtual_tokens, kv_size(config))
    if tuple(weight.shape) != expected:
        raise MethodError(
            f"{source}: prefix embedding has shape {tuple(weight.shape)}, but pre_seq_len {expected[0]} and this "
            f"model (layers {config.num_hidden_layers} x 2 x groups {config.num_key_value_heads} x head_dim "
            f"{config.head_dim}) need {expected}; the prefix was trained for a different model shape"
        )


def load_prefix_weights(model: PrefixModel, state: dict[str, torch.Tensor], source: Path) -> None:
    """Copy prefix tensors into ``model`` in place (keeps parameters, so optimizer state stays attached)."""
    own = model.prefix_encoder.state_dict()
    for name, tensor in state.items():
        if name not in own:
            raise MethodError(f"{source}: unexpected prefix encoder tensor {OFFICIAL_PREFIX}{name}")
        if own[name].shape != tensor.shape:
            raise MethodError(f"{source}: {OFFICIAL_PREFIX}{name} has shape {tuple(tensor.shape)}, "
                              f"expected {tuple(own[name].shape)}")
    missing = sorted(set(own) - set(state))
    if missing:
        raise MethodError(f"{source}: missing prefix encoder tensors {', '.join(OFFICIAL_PREFIX + m for m in missing)}")
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)


def prepare_ptuning(model: nn.Module, options: PrefixOptions) -> PrefixModel:
    """``model`` frozen and wrapped with a fresh prefix: only the prefix encoder trains."""
    model.requires_grad_(False)
    return PrefixModel(model, options)


def apply_prefix(model: nn.Module, prefix_dir: str | os.PathLike, *,
                 base_path_override: str | None = None) -> PrefixModel:
    """``model`` wrapped with the P-Tuning v2 prefix saved in ``prefix_dir`` (eval mode, nothing trainable).

    ``base_path_override`` is accepted as every method's loader takes it; a prefix records no base path.
    """
    folder = Path(prefix_dir)
    if not folder.is_dir():
        raise MethodError(f"{folder}: prefix folder not found")
    cfg = read_prefix_config(folder)
    state, source = read_prefix_state(folder)
    options = options_for(cfg, state, source)
    check_prefix_shape(state, options, find_glm(model).config, source)
    wrapped = PrefixModel(model, options)
    load_prefix_weights(wrapped, state, source)
    wrapped.requires_grad_(False)
    wrapped.eval()
    return wrapped


def save_prefix(model: PrefixModel, out_dir: str | os.PathLike) -> list[Path]:
    """Write only the prefix, in the official format (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {OFFICIAL_PREFIX + k: v.detach().contiguous().cpu()
             for k, v in model.prefix_encoder.state_dict().items()}
    save_file(state, str(out / PREFIX_FILE), metadata={"format": "pt"})
    cfg = {"pre_seq_len": model.options.num_virtual_tokens, "prefix_projection": model.options.prefix_projection}
    if model.options.prefix_projection:
        cfg["prefix_hidden_size"] = model.prefix_encoder.trans[0].out_features
    glm = find_glm(model.base_model).config
    # Shape of the base model, so a mismatch can be explained before any weights are read.
    cfg.update(num_layers=glm.num_hidden_layers, multi_query_group_num=glm.num_key_value_heads,
               kv_channels=glm.head_dim, hidden_size=glm.hidden_size)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return [out / PREFIX_FILE, out / "config.json"]


def load_prefix_state(model: PrefixModel, folder: str | os.PathLike) -> None:
    """Resume: load a saved prefix into an already prepared :class:`PrefixModel`, in place."""
    folder = Path(folder)
    state, source = read_prefix_state(folder)
    check_prefix_shape(state, model.options, model.config, source)
    load_prefix_weights(model, state, source)


def add_prefix_to_checkpoint(model: PrefixModel, folder: str | os.PathLike, *, dtype: torch.dtype) -> list[Path]:
    """Turn a chatglm3-layout model folder into the official P-Tuning v2 checkpoint of ``model``'s prefix.

    What the official fine-tune demo saves and ``finetune_demo/inference_hf.py``
    loads with THUDM's code: the whole model, ``transformer.prefix_encoder.*``
    among its weights (here a ``prefix_encoder.safetensors`` shard listed in the
    index), and ``pre_seq_len`` / ``prefix_projection`` in config.json.
    """
    folder = Path(folder)
    glm = find_glm(model.base_model).config
    if model.options.prefix_projection and model.prefix_encoder.trans[0].out_features != glm.hidden_size:
        raise MethodError(f"prefix_hidden_size {model.prefix_encoder.trans[0].out_features} differs from the "
                          f"model's hidden_size {glm.hidden_size}; the official PrefixEncoder always uses hidden_size, "
                          "so this prefix cannot be written as an official checkpoint (use it with glmtune --prefix)")
    state = {OFFICIAL_PREFIX + k: v.detach().to(dtype).contiguous().cpu()
             for k, v in model.prefix_encoder.state_dict().items()}
    save_file(state, str(folder / PREFIX_FILE), metadata={"format": "pt"})
    index_path = folder / INDEX_FILES[0]
    if index_path.is_file():
        index = json.loads(index_path.read_text(encoding="utf-8"))
    else:  # one model.safetensors: an index is what makes loaders read the prefix shard too
        header = safetensors_header(folder / "model.safetensors")
        size = sum(end - start for _, _, start, end in header.values())
        index = {"metadata": {"total_size": size}, "weight_map": dict.fromkeys(header, "model.safetensors")}
    index["weight_map"].update(dict.fromkeys(state, PREFIX_FILE))
    index["metadata"]["total_size"] += sum(t.numel() * t.element_size() for t in state.values())
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg.update(pre_seq_len=model.options.num_virtual_tokens, prefix_projection=model.options.prefix_projection)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return [folder / PREFIX_FILE, index_path, folder / "config.json"]
