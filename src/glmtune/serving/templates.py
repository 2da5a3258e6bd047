"""The chat template a serving engine (vLLM, SGLang) should use for a glmtune export.

Engines pass a request's tools as ``apply_chat_template(..., tools=...)`` and its history as OpenAI
messages (assistant ``tool_calls``, ``tool`` results). GLM-4-9B folders keep THUDM's template, which reads
tools only from a message's ``tools`` key and knows neither shape, so the served model would never see the
tools; glmtune's GLM-4 template renders the same prompts and the OpenAI shapes too.
"""

from __future__ import annotations

from typing import Any

from ..families import detect_family
from ..families.glm4_template import CHAT_TEMPLATE as GLM4_TEMPLATE

PROBE_TOOL = "glmtune_probe_tool"


def template_renders_tools(tokenizer: Any) -> bool:
    """Whether ``tokenizer``'s chat template shows the model OpenAI-style ``tools=`` (engines pass them so)."""
    probe = [{"type": "function", "function": {"name": PROBE_TOOL, "description": "", "parameters": {}}}]
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=probe,
                                             add_generation_prompt=True, tokenize=False)
    except Exception:  # a template that raises on tools (jinja2's errors have no common base) cannot serve them
        return False
    return PROBE_TOOL in text


def engine_chat_template(folder: str) -> str:
    """glmtune's template for a GLM-4-9B export whose own ignores ``tools=``; "" where the folder's serves."""
    # deferred: transformers is heavy and only the scripts ask this
    from transformers import AutoTokenizer

    family = detect_family(folder).name
    if family != "glm4" or template_renders_tools(AutoTokenizer.from_pretrained(folder)):
        return ""
    return GLM4_TEMPLATE
