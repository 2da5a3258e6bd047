"""Reading and writing weight files, safely and shard by shard.

Nothing found in a model folder is ever imported or executed: safetensors are
read with ``safe_open``, ``.bin`` shards only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from safetensors.torch import save_file

from ..files import apply_umask
from .convert import CheckpointError

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def weight_files(folder: Path) -> list[Path]:
    """The weight shards of a model folder, in index order; errors name what is missing."""
    for index_name in INDEX_FILES:
        index = folder / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index}: no 'weight_map' in the index")
            files = list(dict.fromkeys(weight_map.values()))
            for name in files:
                if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
                    raise CheckpointError(f"{index}: 'weight_map' lists {json.dumps(name)} as a shard; expected "
                                          "the name of a weight file inside the model folder")
                if not (folder / name).is_file():
                    raise CheckpointError(f"{index}: shard {name} is listed but missing from {folder}")
            return [folder / name for name in files]
    for name in SINGLE_FILES:
        if (folder / name).is_file():
            return [folder / name]
    raise CheckpointError(
        f"{folder}: no weights found (expected {' or '.join(SINGLE_FILES)}, or a sharded index {' / '.join(INDEX_FILES)})"
    )


_ST_DTYPES = {
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def safetensors_header(path: Path) -> dict[str, tuple[torch.dtype, list[int], int, int]]:
    """name -> (dtype, shape, start, end) with absolute byte offsets, from the file's JSON header.

    Validated as the safetensors library does: every entry well formed, the
    tensors tiling the data section exactly, sizes matching their shapes.
    """
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size < 100 * 1024**2:
                raise ValueError(f"header length {size} is implausible")
            header = json.loads(f.read(size))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        header.pop("__metadata__", None)
        entries = {name: _header_entry(name, info) for name, info in header.items()}
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    offset = 0
    for name, (_, _, start, end) in sorted(entries.items(), key=lambda kv: kv[1][2]):
        if start != offset:
            raise CheckpointError(f"{path}: not a readable safetensors file (tensor {name!r} starts at byte "
                                  f"{start} of the data, expected {offset}: overlapping or gapped tensors)")
        offset = end
    base = 8 + size
    return {name: (dtype, shape, base + start, base + end) for name, (dtype, shape, start, end) in entries.items()}


def _header_entry(name: str, info) -> tuple[torch.dtype, list[int], int, int]:
    if not isinstance(info, dict):
        raise ValueError(f"entry {name!r} is not an object")
    if info.get("dtype") not in _ST_DTYPES:
        raise ValueError(f"tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"tensor {name!r} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"tensor {name!r} has invalid data_offsets {offsets!r}")
    dtype = _ST_DTYPES[info["dtype"]]
    numel = 1
    for d in shape:
        numel *= d
    if numel * torch.empty((), dtype=dtype).element_size() != offsets[1] - offsets[0]:
        raise ValueError(f"tensor {name!r} has {offsets[1] - offsets[0]} bytes, its shape {shape} needs "
                         f"{numel * torch.empty((), dtype=dtype).element_size()}")
    return dtype, shape, offsets[0], offsets[1]


# Elements converted per step: small enough to stay in cache and to bound the
# mapped pages held at once, big enough for torch's parallel copy kernels.
_CHUNK_ELEMENTS = 1 << 20
_PAGE = mmap.PAGESIZE
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)  # absent on Windows: pages then stay until close


def _convert_into(out: torch.Tensor, src: torch.Tensor, scratch: torch.Tensor) -> None:
    # fp16 <-> bf16 goes faster through float32 in cache-sized chunks than
    # directly; one reused scratch buffer, since a fresh temporary per chunk
    # fragments the heap and keeps hundreds of MB resident.
    if {out.dtype, src.dtype} == {torch.float16, torch.bfloat16}:
        src = scratch[: src.numel()].copy_(src)
    out.copy_(src)


def _read_safetensors(path: Path, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    # Convert each tensor straight from the file mapping into its final buffer
    # (one pass, no intermediate copy), a chunk at a time, and drop the mapped
    # pages already converted: they would otherwise count towards RSS until
    # the shard is closed. Peak memory is the loaded model plus one chunk.
    header = safetensors_header(path)
    file_size = path.stat().st_size
    if not header:
        return
    scratch = torch.empty(_CHUNK_ELEMENTS, dtype=torch.float32)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for name, (src_dtype, shape, start, end) in sorted(header.items(), key=lambda kv: kv[1][2]):
            if end > file_size:
                raise CheckpointError(f"{path}: truncated file (tensor {name!r} ends at byte {end} of {file_size})")
            target = dtype if dtype is not None and src_dtype.is_floating_point else src_dtype
            out = torch.empty(shape, dtype=target)
            flat, size = out.view(-1), torch.empty((), dtype=src_dtype).element_size()
            for i in range(0, flat.numel(), _CHUNK_ELEMENTS):
                j = min(flat.numel(), i + _CHUNK_ELEMENTS)
                lo = start + i * size
                src = torch.frombuffer(mm, dtype=src_dtype, count=j - i, offset=lo)
                _convert_into(flat[i:j], src, scratch)
                del src
                first, done = lo // _PAGE * _PAGE, (start + j * size) // _PAGE * _PAGE
                if done > first and _DONTNEED is not None:
                    mm.madvise(_DONTNEED, first, done - first)
            yield name, out


def iter_tensors(path: Path, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of one weight file; floating tensors cast to ``dtype`` when given.

    Safetensors are converted straight from the file mapping, one tensor in memory at a time.
    """
    if path.suffix == ".safetensors":
        with warnings.catch_warnings():  # the mapping is read-only and is never written to
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            yield from _read_safetensors(path, dtype)
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointError(
            f"{path}: cannot be read as plain tensors with weights_only=True ({type(exc).__name__}: {exc}); "
            "glmtune never unpickles arbitrary objects. Convert it to safetensors."
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    for name in list(state):
        tensor = state.pop(name)
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(tensor).__name__}, expected tensors under "
                                  "string names (a state dict)")
        yield name, tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def checkpoint_dtype(files: list[Path]) -> torch.dtype | None:
    """Storage dtype of the first floating tensor, read without loading the weights when possible."""
    for path in files:
        if path.suffix == ".safetensors":
            for dtype, *_ in safetensors_header(path).values():
                if dtype.is_floating_point:
                    return dtype
        else:
            for _, tensor in iter_tensors(path):
                if tensor.is_floating_point():
                    return tensor.dtype
    return None


@dataclass(frozen=True)
class LazyTensor:
    """A tensor to write, made only when its shard is written (``nbytes`` plans the shards beforehand)."""

    nbytes: int
    make: Callable[[], torch.Tensor]


def _nbytes(value: torch.Tensor | LazyTensor) -> int:
    return value.nbytes if isinstance(value, LazyTensor) else value.numel() * value.element_size()


def _materialize(value: torch.Tensor | LazyTensor) -> torch.Tensor:
    tensor = value.make() if isinstance(value, LazyTensor) else value
    return tensor.detach().contiguous().cpu()


def plan_shards(sizes: dict[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Names per shard, in order: a shard is closed before the tensor that would take it past the limit."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, nbytes in sizes.items():
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def save_sharded(
    state: Mapping[str, torch.Tensor | LazyTensor], out_dir: Path, *, max_shard_bytes: int = 2 * 1024**3,
    metadata: dict | None = None,
) -> list[Path]:
    """Write ``state`` as safetensors shards plus ``model.safetensors.index.json`` (or one file).

    Shards are made and written one at a time (a :class:`LazyTensor` is made
    only then), so peak memory is the source plus one shard. Files get the
    permissions the umask gives (not safetensors' 0600).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {name: _nbytes(value) for name, value in state.items()}
    shards = plan_shards(sizes, max_shard_bytes)
    meta = {"format": "pt", **(metadata or {})}
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
    weight_map = {}
    for file_name, shard in zip(names, shards):
        tensors = {name: _materialize(state[name]) for name in shard}
        save_file(tensors, str(out_dir / file_name), metadata=meta)
        apply_umask(out_dir / file_name)  # safetensors writes 0600; weights must be as readable as the config
        del tensors
        weight_map.update(dict.fromkeys(shard, file_name))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return [out_dir / name for name in names]


# Weight files a model write produces (ours, transformers' and the official
# checkpoints'), beside those an existing index lists.
_WRITTEN_WEIGHTS = re.compile(r"^(model(-\d+-of-\d+)?\.safetensors|pytorch_model(-\d+-of-\d+)?\.bin)$")


def remove_weight_files(out_dir: Path) -> list[str]:
    """Remove the weights a previous model write left, so a folder never mixes two layouts.

    Only model weights go: the shards an existing index lists, ``model.safetensors``,
    ``model-*-of-*.safetensors``, ``pytorch_model.bin``, ``pytorch_model-*-of-*.bin``
    and the index files. Anything else (``training_args.bin``, an adapter's
    ``.safetensors``) is the user's and stays. Returns the names removed.
    """
    names = set()
    for index_name in INDEX_FILES:
        index = out_dir / index_name
        if index.is_file():
            try:
                weight_map = read_json(index).get("weight_map")
            except CheckpointError:
                weight_map = None  # a broken index is replaced all the same
            if isinstance(weight_map, dict):
                # Only plain names in this folder: an index must not make us delete elsewhere.
                names.update(v for v in weight_map.values() if isinstance(v, str) and Path(v).name == v)
            names.add(index_name)
    names.update(name for name in os.listdir(out_dir) if _WRITTEN_WEIGHTS.match(name))
    removed = []
    for name in sorted(names):
        if (out_dir / name).is_file():
            (out_dir / name).unlink()
            removed.append(name)
    return removed
