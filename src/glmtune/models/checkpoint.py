"""Reading and writing weight files, safely and shard by shard.

Nothing found in a model folder is ever imported or executed: safetensors are
read with ``safe_open``, ``.bin`` shards only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import queue
import threading
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


def _read_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    # Read each tensor straight into its own buffer with plain file reads, not
    # mmap: mapped pages would count towards RSS until the whole shard is
    # closed, while file reads leave only the page cache behind.
    header = safetensors_header(path)
    file_size = path.stat().st_size
    with open(path, "rb", buffering=0) as f:
        for name, (dtype, shape, start, end) in sorted(header.items(), key=lambda kv: kv[1][2]):
            if end > file_size:
                raise CheckpointError(f"{path}: truncated file (tensor {name!r} ends at byte {end} of {file_size})")
            buf = torch.empty(end - start, dtype=torch.uint8)
            f.seek(start)
            view, got = memoryview(buf.numpy()), 0
            while got < len(view):
                n = f.readinto(view[got:])
                if not n:
                    raise CheckpointError(f"{path}: truncated file while reading tensor {name!r}")
                got += n
            yield name, buf.view(dtype).reshape(shape)


def _prefetched(items: Iterator, depth: int = 1) -> Iterator:
    """Run ``items`` one step ahead in a thread, so reading overlaps the caller's conversion.

    File reads and torch casts both release the GIL; ``depth`` bounds the extra
    tensors held in memory.
    """
    done = object()
    q: queue.Queue = queue.Queue(maxsize=depth)

    def produce() -> None:
        try:
            for item in items:
                q.put(item)
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    threading.Thread(target=produce, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of one weight file, at most two tensors in memory at a time for safetensors."""
    if path.suffix == ".safetensors":
        yield from _prefetched(_read_safetensors(path))
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
        yield name, state.pop(name)


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
