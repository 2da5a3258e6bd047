"""GLM-4-0414's tokenizer: the folder's own ``tokenizer.json`` (``PreTrainedTokenizerFast``) behind glmtune's interface.

GLM-4-9B/32B-0414 and GLM-Z1 ship a standard Hugging Face tokenizer (byte-level BPE, GLM-4's special
tokens ``<|endoftext|>``, ``[gMASK]``, ``<sop>``, ``<|system|>``...) and their chat template in
``tokenizer_config.json`` (or ``chat_template.jinja``). This wrapper reads them with transformers
(never any code from the folder) and gives what the rest of glmtune calls: ``encode``/``decode``,
``special_tokens``/``get_command``/``role_id``, ``prefix_ids``, ``stop_ids``, ``pad``, ``save_pretrained``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..tokenizer import ChatGLMTokenizer, TokenizerError

TOKENIZER_FILE = "tokenizer.json"


def _folder_of(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


def _stop_ids_of(folder: Path, special: dict[str, int], eos: int) -> list[int]:
    """generation_config.json's eos list when the folder has one (the model's own), else eos, <|user|>, <|observation|>."""
    path = folder / "generation_config.json"
    try:
        found = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id") if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        found = None
    ids = found if isinstance(found, list) else [found] if isinstance(found, int) else []
    ids = [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]
    if not ids:
        ids = [eos] + [special[t] for t in ("<|user|>", "<|observation|>") if t in special]
    return list(dict.fromkeys(ids))


class GLM40414Tokenizer:
    """A ``PreTrainedTokenizerFast`` from a GLM-4-0414 folder, with :class:`glmtune.tokenizer.ChatGLMTokenizer`'s interface.

    ``encode`` gives BPE ids only (no ``[gMASK] <sop>``: :meth:`prefix_ids`) and reads special-token
    names in text as plain text unless ``allow_special``; the chat template's rendering reads them as
    tokens, as transformers does for the official template.
    """

    padding_side = "left"
    family_name = "glm4-0414"
    """The model family whose format this tokenizer serves (``glmtune.families``)."""

    def __init__(self, path: str | os.PathLike):
        # Deferred: transformers and tokenizers are heavy; only a GLM-4-0414 folder needs them here.
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        folder = _folder_of(path)
        if not (folder / TOKENIZER_FILE).is_file():
            raise TokenizerError(f"{folder}: no {TOKENIZER_FILE} (a GLM-4-0414 folder holds the Hugging Face tokenizer "
                                 "files tokenizer.json and tokenizer_config.json)")
        try:
            self.hf = PreTrainedTokenizerFast.from_pretrained(str(folder))
        except (OSError, ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
            raise TokenizerError(f"{folder}: cannot read the tokenizer files ({type(exc).__name__}: {exc})") from None
        self.folder, self.model_file = folder, folder / TOKENIZER_FILE
        self.special_tokens = {t.content: i for i, t in sorted(self.hf.added_tokens_decoder.items()) if t.special}
        self.index_special_tokens = {i: t for t, i in self.special_tokens.items()}
        for needed in ("[gMASK]", "<sop>"):
            if needed not in self.special_tokens:
                raise TokenizerError(f"{folder}/{TOKENIZER_FILE}: no special token {needed!r}; this is not a GLM-4 "
                                     "tokenizer (set model.family to the right family)")
        self.eos_token_id = self.hf.eos_token_id if self.hf.eos_token_id is not None else self.get_command("<|endoftext|>")
        self.pad_token_id = self.hf.pad_token_id if self.hf.pad_token_id is not None else self.eos_token_id
        self.bos_token_id = None
        self._stop_ids = _stop_ids_of(folder, self.special_tokens, self.eos_token_id)
        # Plain-text encoding: the same tokenizer with special-token names read as text.
        self._plain = Tokenizer.from_str(self.hf.backend_tokenizer.to_str())
        self._plain.encode_special_tokens = True

    # -- the transformers tokenizer ------------------------------------------------
    @property
    def chat_template(self) -> str | None:
        return self.hf.chat_template

    # tok(text) and apply_chat_template (the folder's own template) delegate to .hf, as ChatGLM3's do.
    __call__ = ChatGLMTokenizer.__call__
    apply_chat_template = ChatGLMTokenizer.apply_chat_template

    def render_ids(self, messages: list[dict], *, tools: list | None = None, add_generation_prompt: bool = False,
                   where: str = "") -> list[int]:
        """``apply_chat_template(messages, tools=..., tokenize=True)``: the template's text, special tokens read."""
        if not self.hf.chat_template:
            raise TokenizerError(f"{where or self.folder}: the tokenizer has no chat template (a base model such "
                                 "as GLM-4-32B-Base-0414?); train it on context/target records, or use a chat model")
        from jinja2 import TemplateError  # deferred: comes with transformers, needed only here

        try:
            text = self.hf.apply_chat_template(messages, tools=tools, tokenize=False,
                                               add_generation_prompt=add_generation_prompt)
        except (TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:  # the template's own message
            raise TokenizerError(f"{where or self.folder}: the chat template cannot render these messages "
                                 f"({type(exc).__name__}: {exc})") from None
        return self.encode(text, allow_special=True)

    batch_decode = ChatGLMTokenizer.batch_decode

    # -- vocabulary (lookups as ChatGLMTokenizer's) -------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def special_token_names(self) -> tuple[str, ...]:
        return tuple(self.special_tokens)

    __len__ = ChatGLMTokenizer.__len__
    get_command = ChatGLMTokenizer.get_command
    role_id = ChatGLMTokenizer.role_id

    def prefix_ids(self) -> list[int]:
        """``[gMASK] <sop>``, which starts every GLM-4 sequence."""
        return [self.special_tokens["[gMASK]"], self.special_tokens["<sop>"]]

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end an assistant turn: the folder's generation_config eos list (GLM-4-0414: 151329, 151336, 151338)."""
        return list(self._stop_ids)

    # -- encode / decode --------------------------------------------------------------
    def encode(self, text: str, *, add_prefix: bool = False, allow_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        backend = self.hf.backend_tokenizer if allow_special else self._plain
        return (self.prefix_ids() if add_prefix else []) + backend.encode(text, add_special_tokens=False).ids

    def tokenize(self, text: str) -> list[str]:
        return self._plain.encode(text, add_special_tokens=False).tokens

    def decode(self, ids, *, skip_special_tokens: bool = False, skip_unknown: bool = False) -> str:
        """Text of ``ids`` as transformers decodes them; an id outside the vocabulary is an error unless skipped."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad and not skip_unknown:
            raise TokenizerError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1}); "
                                 "pass skip_unknown=True to drop such ids")
        ids = [i for i in ids if 0 <= i < self.vocab_size]
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.hf.convert_ids_to_tokens(int(i)) if 0 <= int(i) < self.vocab_size else f"<invalid:{int(i)}>"
                for i in ids]

    # Left padding as the official tokenizers: pads get id pad, attention 0, position 0.
    pad = ChatGLMTokenizer.pad

    # -- files --------------------------------------------------------------------------
    def save_hf(self, out_dir: str | os.PathLike) -> list[str]:
        """The standard Hugging Face files (what exports carry): :meth:`save_pretrained` already writes them."""
        return self.save_pretrained(out_dir)

    def save_pretrained(self, out_dir: str | os.PathLike) -> list[str]:
        """The Hugging Face files (tokenizer.json, tokenizer_config.json with the chat template), marked with the family."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [Path(p).name for p in self.hf.save_pretrained(str(out_dir))]
        config_file = out_dir / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["glmtune_family"] = self.family_name
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return sorted(set(written))

    save_hf = save_pretrained
    """A native export's tokenizer files: the same standard files."""
