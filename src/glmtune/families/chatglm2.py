"""ChatGLM2-6B (and -32k): ChatGLM3's SentencePiece model with ChatGLM2's five special tokens, ``[Round N]`` format.

The weights load exactly as ChatGLM3's (same architecture and key names); ChatGLM2-6B-32k divides
positions by ``rope_ratio`` (``rope = "linear"``) where ChatGLM3-32k and GLM-4 multiply the base.
The formats live in :mod:`glmtune.families.chatglm2_format`.
"""

from __future__ import annotations

from pathlib import Path

from ..tokenizer import TOKENIZER_FILE, ChatGLMTokenizer
from . import chatglm2_format as fmt
from .base import Family, model_names


class ChatGLM2Tokenizer(ChatGLMTokenizer):
    """THUDM's ChatGLM2 tokenizer: ``[MASK] [gMASK] [sMASK] sop eop`` after the pieces (64789..64793), no role
    tokens (the text ``<|user|>`` is plain text), generation ends on eos only.

    As in the official ``SPTokenizer.convert_id_to_token``, special tokens decode to nothing.
    """

    family_name = "chatglm2"
    special_token_names = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
    chat_template = fmt.CHAT_TEMPLATE
    """What the Hugging Face tokenizer (``.hf``, exports) renders: the ``[Round N]`` prompt."""

    @property
    def stop_ids(self) -> list[int]:
        return [self.eos_token_id]

    def _decode_piece(self, i: int) -> str | None:
        return "" if i in self.index_special_tokens else super()._decode_piece(i)


def _load(path: Path) -> ChatGLM2Tokenizer:
    return ChatGLM2Tokenizer(path)


def _detect(config: dict, tok_config: dict, folder: Path) -> bool:
    """THUDM's folders name the model (``THUDM/chatglm2-6b``, ``-32k``); glmtune's native exports carry its template."""
    if "chatglm2" in model_names(config, tok_config):
        return True
    return config.get("model_type") == "glm" and "问：" in str(tok_config.get("chat_template", ""))


def _chat_template(tokenizer) -> str:
    return fmt.CHAT_TEMPLATE


FAMILY = Family(
    name="chatglm2",
    title="ChatGLM2-6B (and -32k)",
    tokenizer_file=TOKENIZER_FILE,
    tokenizer_format="sentencepiece",
    load_tokenizer=_load,
    encode_chat=fmt.encode_chat,
    encode_base=fmt.encode_base,
    build_prompt=fmt.build_prompt,
    parse_reply=fmt.parse_reply,
    render_tool_call=fmt.render_tool_call,
    template_version=fmt.TEMPLATE_VERSION,
    detect=_detect,
    shapes=("chatglm2-6b",),
    chat_template=_chat_template,
    rope="linear",
    piecewise_truncation=True,
    has_tools=False,
    has_system=False,
    description="THUDM layout (config.json model_type 'chatglm' whose _name_or_path, or tokenizer_config.json's "
                "name_or_path, says chatglm2: THUDM/chatglm2-6b, THUDM/chatglm2-6b-32k) with the SentencePiece "
                "tokenizer.model (the same file as ChatGLM3's), or a native export of one.",
)
