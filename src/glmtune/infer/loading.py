"""What ``chat``, ``eval`` and ``serve`` share: model + tokenizer from command-line paths, tool files."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def load_for_inference(model_path, *, adapter=None, prefix=None, tokenizer=None, dtype=None, device=None):
    """(model, tokenizer) ready for generation; ``--adapter`` and ``--prefix`` exclude each other."""
    from ..devices import resolve_device
    from ..models import load_model
    from ..tokenizer import find_tokenizer, load_tokenizer

    if adapter and prefix:
        raise UserError("--adapter and --prefix exclude each other: a model is tuned with LoRA or with P-Tuning")
    tok = load_tokenizer(find_tokenizer(tokenizer, model_path, adapter, prefix))
    model = load_model(model_path, dtype=dtype, device=resolve_device(device), adapter=adapter, prefix=prefix)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and tok.vocab_size > vocab:
        raise UserError(f"tokenizer has {tok.vocab_size} ids but the model only {vocab}: "
                        "the tokenizer does not belong to this model (pass the right --tokenizer)")
    return model, tok


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
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: tools file not found (expected a JSON list of tool definitions)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); expected a list of tool definitions") from None
    return normalize_tools(data, str(path))
