"""ChatGLM3-6B (chat, base, 32k): SentencePiece tokenizer with role tokens, THUDM's multi-turn fine-tune format.

The implementation lives where it always did (``glmtune.tokenizer``, ``glmtune.data.chat_format``,
``glmtune.hf_tokenizer``); this module is the family record that names it.
"""

from __future__ import annotations

from pathlib import Path

from ..data import chat_format
from ..hf_tokenizer import CHAT_TEMPLATE
from ..tokenizer import TOKENIZER_FILE, ChatGLMTokenizer
from .base import Family


def _load(path: Path) -> ChatGLMTokenizer:
    return ChatGLMTokenizer(path)


def _encode_chat(conversation, tokenizer, *, combine=None, max_source=None, max_target=None):
    # ChatGLM3's chat samples are cut as a whole (max_input + max_output + 1) by the caller.
    return chat_format.encode_chat(conversation, tokenizer)


def _names(config: dict, tok_config: dict) -> str:
    return " ".join(str(d.get(k, "")) for d in (config, tok_config) for k in ("_name_or_path", "name_or_path")).lower()


def _detect(config: dict, tok_config: dict, folder: Path) -> bool:
    if config.get("glmtune_family") == "chatglm3" or tok_config.get("glmtune_family") == "chatglm3":
        return True
    if "chatglm3" in _names(config, tok_config):
        return True
    # Folders glmtune wrote before families existed: its tokenizer_config lists ChatGLM3's role tokens, or its
    # native export (model_type glm) has ChatGLM3's vocabulary and tool-call template.
    if "<|user|>" in (tok_config.get("glmtune_special_tokens") or {}):
        return True
    return config.get("model_type") == "glm" and "tool_call(" in str(tok_config.get("chat_template", ""))


def _chat_template(tokenizer) -> str:
    return CHAT_TEMPLATE


FAMILY = Family(
    name="chatglm3",
    title="ChatGLM3-6B (chat, base, 32k)",
    tokenizer_file=TOKENIZER_FILE,
    tokenizer_format="sentencepiece",
    load_tokenizer=_load,
    encode_chat=_encode_chat,
    encode_base=chat_format.encode_base,
    build_prompt=chat_format.build_prompt,
    parse_reply=chat_format.parse_reply,
    render_tool_call=chat_format.render_tool_call,
    template_version=chat_format.TEMPLATE_VERSION,
    detect=_detect,
    tools_system=chat_format.TOOLS_PROMPT.rstrip("\n"),
    chat_template=_chat_template,
    shapes=("chatglm3-6b", "chatglm3-6b-base", "chatglm3-6b-32k", "tiny", "small", "chatglm3-bench"),
    description="THUDM layout (config.json model_type 'chatglm', _name_or_path THUDM/chatglm3-6b*) or a native "
                "GLM export, with the SentencePiece tokenizer.model.",
)
