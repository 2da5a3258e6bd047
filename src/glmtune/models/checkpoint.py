"""Reading and writing weight files, safely and shard by shard.

Nothing found in a model folder is ever imported or executed: safetensors are
read with ``safe_open``, ``.bin`` shards only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import mmap
import os
import warnings
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import save_file

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
    """name -> (dtype, shape, start, end) with absolute byte offsets, from the file's JSON header."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size < 100 * 1024**2:
                raise ValueError(f"header length {size} is implausible")
            header = json.loads(f.read(size))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    header.pop("__metadata__", None)
    base = 8 + size
    out = {}
    for name, info in header.items():
        if info.get("dtype") not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        start, end = info["data_offsets"]
        out[name] = (_ST_DTYPES[info["dtype"]], list(info["shape"]), base + start, base + end)
    return out


# Elements converted per step: small enough to stay in cache and to bound the
# mapped pages held at once, big enough for torch's parallel copy kernels.
_CHUNK_ELEMENTS = 1 << 20
_PAGE = mmap.PAGESIZE


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
            if flat.numel() * size != end - start:
                raise CheckpointError(f"{path}: tensor {name!r} has {end - start} bytes, its shape needs "
                                      f"{flat.numel() * size}")
            for i in range(0, flat.numel(), _CHUNK_ELEMENTS):
                j = min(flat.numel(), i + _CHUNK_ELEMENTS)
                lo = start + i * size
                src = torch.frombuffer(mm, dtype=src_dtype, count=j - i, offset=lo)
                _convert_into(flat[i:j], src, scratch)
                del src
                first, done = lo // _PAGE * _PAGE, (start + j * size) // _PAGE * _PAGE
                if done > first:
                    mm.madvise(mmap.MADV_DONTNEED, first, done - first)
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


def save_sharded(
    state: dict[str, torch.Tensor], out_dir: Path, *, max_shard_bytes: int = 2 * 1024**3, metadata: dict | None = None
) -> list[Path]:
    """Write ``state`` as safetensors shards plus ``model.safetensors.index.json`` (or one file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.detach().contiguous().cpu()
        size += nbytes
    meta = {"format": "pt", **(metadata or {})}
    if len(shards) == 1:
        path = out_dir / "model.safetensors"
        save_file(shards[0], str(path), metadata=meta)
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out_dir / name), metadata=meta)
        weight_map.update(dict.fromkeys(shard, name))
        paths.append(out_dir / name)
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return paths


def remove_weight_files(out_dir: Path) -> None:
    """Remove weights a previous write left, so a folder never mixes two layouts."""
    for name in os.listdir(out_dir):
        if name.endswith((".safetensors", ".bin")) or name in INDEX_FILES:
            (out_dir / name).unlink()
