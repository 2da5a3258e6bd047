"""What ``chat``, ``eval`` and ``serve`` share: model + tokenizer from command-line paths, tool files."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..devices import resolve_device
from ..methods import MethodError
from ..models import SHAPES
from ..families import find_tokenizer, load_tokenizer


def load_for_inference(model_path, *, adapter=None, prefix=None, tokenizer=None, dtype=None, device=None,
                       family=None, quantize=None):
    """(model, tokenizer) ready for generation; ``--adapter`` and ``--prefix`` exclude each other.

    ``quantize`` (4 or 8): the base model's decoder quantized through bitsandbytes (``--quantize``).

    ``model_path`` may also be a fine-tuning result (see :func:`resolve_model_args`).
    """
    # deferred: imports torch, transformers
    from ..api import check_quantized_answering, load_model

    if adapter and prefix:
        raise UserError("--adapter and --prefix exclude each other: a model is tuned with LoRA or with P-Tuning")
    model_path, adapter, prefix = resolve_model_args(model_path, adapter, prefix)
    if quantize is not None:  # before the base loads (minutes for a 6B model)
        check_quantized_answering(quantize, adapter, option="--quantize")
    tok = load_tokenizer(find_tokenizer(tokenizer, model_path, adapter, prefix, family=family), family=family)
    model = load_model(model_path, dtype=dtype, device=resolve_device(device), adapter=adapter, prefix=prefix,
                       family=family, quantization=quantize)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and tok.vocab_size > vocab:
        raise UserError(f"tokenizer has {tok.vocab_size} ids but the model only {vocab}: "
                        "the tokenizer does not belong to this model (pass the right --tokenizer)")
    return model, tok


def resolve_model_args(model_path, adapter=None, prefix=None) -> tuple:
    """(model, adapter, prefix) to load for ``--model MODEL`` as the user gave it.

    A path that does not exist (a hub id, a typo) is an error saying that
    glmtune never downloads. A fine-tuning result given as ``--model`` (a
    LoRA adapter, P-Tuning prefix or freeze result: no model weights of its
    own) loads on the base model its ``adapter_config.json`` names when that
    folder exists here; otherwise the error says to pass it as ``--adapter``
    or ``--prefix`` with the base model.
    """
    path = Path(model_path).expanduser()
    if not path.exists():
        if str(model_path) in SHAPES:
            return model_path, adapter, prefix
        raise UserError(_not_found(str(model_path)))
    method = None if adapter or prefix or not path.is_dir() else _result_method(path)
    if method is None:
        return model_path, adapter, prefix
    base = _adapter_base(path)
    if base is not None and (Path(base).expanduser() / "config.json").is_file():
        return base, path, None
    option = "--prefix" if method == "ptuning" else "--adapter"
    text = (f"--model {path}: this folder is a fine-tuning result, not a model; pass the base model as --model "
            f"and this folder as {option} (e.g. --model BASE_MODEL {option} {path})")
    if base:
        text += f"; its adapter_config.json names the base {base!r}, which is not a model folder on this machine"
    raise UserError(text)


_MODEL_WEIGHTS = ("model*.safetensors", "pytorch_model*.bin")


def _result_method(path: Path) -> str | None:
    """The method of a fine-tuning result folder (no model weights of its own), else None."""
    # Deferred: the methods package imports torch.
    from ..methods.registry import detect_method

    if any(next(path.glob(pattern), None) for pattern in _MODEL_WEIGHTS):
        return None
    try:
        return detect_method(path)
    except MethodError:
        return None


def _adapter_base(path: Path) -> str | None:
    """The base model a LoRA adapter names (PEFT's ``base_model_name_or_path``), if any."""
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return base if isinstance(base, str) and base else None


def _not_found(model: str) -> str:
    return (f"--model {model!r}: no such folder. glmtune does not download models: pass a local model folder "
            f"(config.json, weights, tokenizer.model){hub_id_hint(model)}")


def hub_id_hint(name: str) -> str:
    """'; NAME looks like a Hugging Face hub id: download it first (...)' when it does, else ''."""
    parts = name.split("/")
    if len(parts) != 2 or not all(parts) or name.startswith((".", "~")):
        return ""
    return (f"; {name!r} looks like a Hugging Face hub id: download it first "
            f"(e.g. `huggingface-cli download {name} --local-dir models/{parts[1]}`)")


def _as_chatglm_tool(tool, where: str) -> dict:
    # OpenAI's {"type": "function", "function": {...}} and ChatGLM3's bare
    # {"name", "description", "parameters"} are both common; the model was trained on the latter.
    if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        tool = tool["function"]
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
        raise UserError(f"{where}: expected a tool object with a 'name' (ChatGLM3 or OpenAI function format), "
                        f"got {json.dumps(tool, ensure_ascii=False)[:80]}")
    return tool


def normalize_tools(tools, where: str = "tools") -> list[dict]:
    """ChatGLM3-format tool list from a list (or ``{"tools": [...]}``) in ChatGLM3 or OpenAI format."""
    if isinstance(tools, dict) and "tools" in tools:
        tools = tools["tools"]
    if not isinstance(tools, list):
        raise UserError(f"{where}: expected a JSON list of tools, got {type(tools).__name__}")
    return [_as_chatglm_tool(t, f"{where}: tool {i}") for i, t in enumerate(tools)]


def read_tools(path) -> list[dict]:
    """Tools from a JSON file; any readable file works, a pipe such as ``--tools <(...)`` included."""
    path = Path(path)
    if not path.exists() or path.is_dir():
        raise UserError(f"{path}: tools file not found (expected a JSON list of tool definitions)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        "expected a JSON list of tool definitions") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); expected a list of tool definitions") from None
    return normalize_tools(data, str(path))
