"""GLM-4-0414 (GLM-4-9B/32B-0414, GLM-Z1-9B/32B-0414): transformers' native ``Glm4ForCausalLM``, the folder's tokenizer.

A folder holds ``config.json`` with ``model_type: "glm4"`` (loaded as ``Glm4ForCausalLM``, no conversion),
safetensors weights, and the Hugging Face tokenizer files (``tokenizer.json``, ``tokenizer_config.json`` with
the chat template). Formats: :mod:`.glm4_0414_format`; tokenizer: :mod:`.glm4_0414_tokenizer`.
"""

from __future__ import annotations

from pathlib import Path

from . import glm4_0414_format as fmt
from .base import Family, model_names
from .glm4_0414_tokenizer import TOKENIZER_FILE, GLM40414Tokenizer


def _detect(config: dict, tok_config: dict, folder: Path) -> bool:
    """``model_type: "glm4"`` (Glm4ForCausalLM); a folder with no config.json: a name saying GLM-4-*-0414 or GLM-Z1."""
    if config.get("model_type"):
        return config["model_type"] == "glm4"
    names = model_names(config, tok_config)
    return "glm" in names and ("0414" in names or "z1" in names)


FAMILY = Family(
    name="glm4-0414",
    title="GLM-4-0414 (GLM-4-9B/32B-0414, GLM-Z1-9B/32B-0414)",
    tokenizer_file=TOKENIZER_FILE,
    tokenizer_format="hf",
    load_tokenizer=GLM40414Tokenizer,
    encode_chat=fmt.encode_chat,
    encode_base=fmt.encode_base,
    build_prompt=fmt.build_prompt,
    parse_reply=fmt.parse_reply,
    render_tool_call=fmt.render_tool_call,
    template_version=fmt.TEMPLATE_VERSION,
    detect=_detect,
    shapes=("glm-4-9b-0414", "glm-4-32b-0414", "glm4-0414-tiny"),
    chat_template=None,  # exports keep the folder's own (its tokenizer files are written as they are)
    combine_default=True,
    description="transformers-native folder: config.json model_type 'glm4' (Glm4ForCausalLM), safetensors weights, "
                "tokenizer.json + tokenizer_config.json (its chat template renders every prompt).",
)
