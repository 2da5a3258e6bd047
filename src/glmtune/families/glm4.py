"""GLM-4-9B (chat, base, chat-1m): THUDM's remote-code layout and the transformers-native ``-hf`` folders.

Tokenizer: the tiktoken rank file ``tokenizer.model`` (:mod:`.glm4_tokenizer`); formats: THUDM GLM-4's
``finetune.py`` and chat template (:mod:`.glm4_format`); the weights are ChatGLM3's layout with a
151552-token vocabulary and ``rope_ratio`` scaling the rotary base.
"""

from __future__ import annotations

from pathlib import Path

from . import glm4_format
from .base import Family, model_names
from .glm4_tokenizer import TOKENIZER_FILE, GLM4Tokenizer, load_glm4_tokenizer

VOCAB = 151552
"""GLM-4's padded vocabulary (151329 ranks + 14 special tokens, padded)."""


def _detect(config: dict, tok_config: dict, folder: Path) -> bool:
    model_type = config.get("model_type")
    if model_type == "chatglm":
        return config.get("padded_vocab_size") == VOCAB or tok_config.get("tokenizer_class") == "ChatGLM4Tokenizer"
    if model_type == "glm":  # the -hf folders (GlmForCausalLM)
        return config.get("vocab_size") == VOCAB
    if model_type:  # glm4 is GLM-4-0414's own family
        return False
    names = model_names(config, tok_config)
    return tok_config.get("tokenizer_class") == "ChatGLM4Tokenizer" or (
        "glm-4" in names and "0414" not in names and "z1" not in names)


def _notes(conversation) -> list[tuple[str, str, str]]:
    """GLM-4's finetune.py has no per-message ``loss``: an assistant turn marked ``"loss": false`` is learned."""
    if any(m.role == "assistant" and m.loss is False for m in conversation.messages):
        return [("[glm4] \"loss\": false on an assistant message is ignored, as by GLM-4's official finetune.py: "
                 "that answer is learned", "remove the key, or drop the turn if it must not be learned",
                 "loss_key_ignored")]
    return []


def _chat_template(tokenizer: GLM4Tokenizer) -> str:
    return tokenizer.chat_template


FAMILY = Family(
    name="glm4",
    title="GLM-4-9B (chat, base, chat-1m)",
    tokenizer_file=TOKENIZER_FILE,
    tokenizer_format="tiktoken",
    tokenizer_alternates=("tokenizer.json",),
    load_tokenizer=load_glm4_tokenizer,
    encode_chat=glm4_format.encode_chat,
    encode_base=glm4_format.encode_base,
    build_prompt=glm4_format.build_prompt,
    parse_reply=glm4_format.parse_reply,
    render_tool_call=glm4_format.render_tool_call,
    template_version=glm4_format.TEMPLATE_VERSION,
    detect=_detect,
    notes=_notes,
    chat_template=_chat_template,
    rope="base",
    combine_default=True,
    shapes=("glm-4-9b", "glm-4-9b-chat", "glm-4-9b-base", "glm-4-9b-chat-1m", "glm4-tiny"),
    description="THUDM layout (config.json model_type 'chatglm' with padded_vocab_size 151552, or "
                "tokenizer_config.json tokenizer_class ChatGLM4Tokenizer) or a native 'glm' folder with "
                "vocab_size 151552, with the tiktoken tokenizer.model.",
)
