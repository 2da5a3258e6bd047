"""The ChatGLM3 tokenizer, on SentencePiece, with no remote code.

Ids and behaviour follow THUDM's ``tokenization_chatglm.py``: the
SentencePiece pieces come first, then the nine special tokens are appended in
a fixed order, so their ids depend only on the size of the SentencePiece
model (64789.. for the real ``tokenizer.model``).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import torch
from sentencepiece import SentencePieceProcessor, SentencePieceTrainer

from .errors import GlmtuneError
from .hf_tokenizer import load_hf_tokenizer, save_hf_tokenizer

SPECIAL_TOKENS = (
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
)
ROLES = ("system", "user", "assistant", "observation")
TOKENIZER_FILE = "tokenizer.model"


class TokenizerError(GlmtuneError, ValueError):
    """A tokenizer file is missing or an id cannot be decoded."""


class ChatGLMTokenizer:
    """ChatGLM3 tokenizer: ``encode`` / ``decode`` identical to the official one.

    ``encode`` turns text into SentencePiece ids only (no ``[gMASK] sop``
    prefix; :meth:`prefix_ids` gives it). Special-token strings inside text
    are *not* parsed as special tokens, as in the official default, so user
    data can never forge a role token.
    """

    padding_side = "left"
    family_name = "chatglm3"
    """The model family whose format this tokenizer serves (``glmtune.families``)."""
    special_token_names = SPECIAL_TOKENS
    """Special tokens appended after the SentencePiece pieces, in id order (ChatGLM2 has only the first five)."""

    def __init__(self, model_file: str | os.PathLike):
        model_file = Path(model_file)
        if not model_file.is_file():
            raise TokenizerError(f"{model_file}: tokenizer file not found (expected a SentencePiece {TOKENIZER_FILE})")
        try:
            self.sp = SentencePieceProcessor(model_file=str(model_file))
        except (RuntimeError, OSError) as exc:
            raise TokenizerError(f"{model_file}: not a SentencePiece model ({exc})") from None
        self.model_file = model_file
        self.sp_size = self.sp.vocab_size()
        self.special_tokens = {tok: self.sp_size + i for i, tok in enumerate(self.special_token_names)}
        self.index_special_tokens = {i: tok for tok, i in self.special_tokens.items()}
        self.pad_token_id = self.sp.unk_id()
        self.eos_token_id = self.sp.eos_id()
        self.bos_token_id = self.sp.bos_id()
        self._special_re = re.compile("(" + "|".join(re.escape(t) for t in self.special_token_names) + ")")
        self._hf = None

    # -- the transformers tokenizer ------------------------------------------
    @property
    def hf(self):
        """The equivalent ``transformers.PreTrainedTokenizerFast``, built once from the same ``tokenizer.model``.

        It is what ``AutoTokenizer`` loads from a glmtune export (``tokenizer.json`` + chat template),
        for pipelines, ``Trainer``, vLLM-style code: same ids, same decoding (see ``glmtune.hf_tokenizer``).
        """
        if self._hf is None:
            # load_hf_tokenizer imports transformers and tokenizers itself, only when called.
            self._hf = load_hf_tokenizer(self)
        return self._hf

    def __call__(self, *args, **kwargs):
        """``tok(text)`` as the official (and any transformers) tokenizer: ``[gMASK] sop`` + ids, padding, tensors."""
        return self.hf(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        """transformers' ``apply_chat_template`` with ChatGLM3's template: the ids of ``data.build_prompt``."""
        return self.hf.apply_chat_template(*args, **kwargs)

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        """:meth:`decode` of each sequence."""
        return [self.decode(ids, **kwargs) for ids in sequences]

    # -- vocabulary -----------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.sp_size + len(self.special_token_names)

    def __len__(self) -> int:
        return self.vocab_size

    def get_command(self, token: str) -> int:
        """Id of a special token (``"[gMASK]"``, ``"<|user|>"``, ...)."""
        try:
            return self.special_tokens[token]
        except KeyError:
            raise TokenizerError(f"unknown special token {token!r}; known: {', '.join(self.special_token_names)}") from None

    def role_id(self, role: str) -> int:
        return self.get_command(f"<|{role}|>")

    def prefix_ids(self) -> list[int]:
        """``[gMASK] sop``, which starts every ChatGLM3 sequence."""
        return [self.special_tokens["[gMASK]"], self.special_tokens["sop"]]

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end an assistant turn in chat: eos, ``<|user|>``, ``<|observation|>``."""
        return [self.eos_token_id, self.special_tokens["<|user|>"], self.special_tokens["<|observation|>"]]

    # -- encode / decode ------------------------------------------------
    def encode(self, text: str, *, add_prefix: bool = False, allow_special: bool = False) -> list[int]:
        """SentencePiece ids of ``text``.

        ``allow_special=True`` turns special-token strings in ``text`` into
        their ids (the official ``encode_special_tokens``); off by default.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        ids = self.prefix_ids() if add_prefix else []
        if not allow_special:
            return ids + self.sp.encode(text)
        for part in self._special_re.split(text):
            if part in self.special_tokens:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self.sp.encode(part))
        return ids

    def tokenize(self, text: str) -> list[str]:
        return self.sp.encode_as_pieces(text)

    def _decode_piece(self, i: int) -> str | None:
        """The piece the official ``SPTokenizer.convert_id_to_token`` gives ``i``; ``None`` outside the vocabulary."""
        if i in self.index_special_tokens:
            return self.index_special_tokens[i]
        if i in (self.eos_token_id, self.bos_token_id, self.pad_token_id):
            return ""
        if 0 <= i < self.sp_size:
            return self.sp.id_to_piece(i)
        return None

    def decode(self, ids, *, skip_special_tokens: bool = False, skip_unknown: bool = False) -> str:
        """Text of ``ids``, exactly as the official ChatGLM3 tokenizer decodes them.

        As there, every id becomes a piece (special tokens their names, eos/bos/pad
        nothing) and SentencePiece decodes the pieces in one pass, so the "▁" after a
        special token stays a space (``<|user|> \\n``). ``skip_special_tokens`` is
        accepted for compatibility and, as in the official tokenizer (whose
        transformers special-token map is empty), removes nothing.

        An id outside the vocabulary raises :class:`TokenizerError` naming it,
        unless ``skip_unknown=True``: then it decodes to nothing, as officially.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        pieces = []
        for i in ids:
            piece = self._decode_piece(int(i))
            if piece is None:
                if not skip_unknown:
                    raise TokenizerError(
                        f"token id {int(i)} is outside the vocabulary (0..{self.vocab_size - 1}); "
                        "pass skip_unknown=True to drop such ids"
                    )
                piece = ""
            pieces.append(piece)
        return self.sp.decode_pieces(pieces)

    def convert_ids_to_tokens(self, ids) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if i in self.index_special_tokens:
                out.append(self.index_special_tokens[i])
            elif 0 <= i < self.sp_size:
                out.append(self.sp.id_to_piece(i))
            else:
                out.append(f"<invalid:{i}>")
        return out

    # -- batching ---------------------------------------------------------
    def pad(self, batch: list[list[int]], *, max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Left-pad a batch like the official tokenizer.

        Pads get id 0, attention 0 and position 0; each row's real tokens get
        positions 0..n-1.
        """
        width = max(max((len(r) for r in batch), default=0), max_length or 0)
        input_ids, attention, positions = [], [], []
        for row in batch:
            pad = width - len(row)
            input_ids.append([self.pad_token_id] * pad + list(row))
            attention.append([0] * pad + [1] * len(row))
            positions.append([0] * pad + list(range(len(row))))
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
        }

    # -- files --------------------------------------------------------------
    def save_hf(self, out_dir: str | os.PathLike) -> list[str]:
        """Write the standard ``tokenizer.json`` + ``tokenizer_config.json`` (chat template) that
        ``AutoTokenizer`` loads without remote code; returns the names written."""
        return save_hf_tokenizer(self, out_dir)

    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """Write ``tokenizer.model`` and a ``tokenizer_config.json``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.model_file.resolve() != (out_dir / TOKENIZER_FILE).resolve():
            shutil.copyfile(self.model_file, out_dir / TOKENIZER_FILE)
        config = {
            "tokenizer_class": "ChatGLMTokenizer",
            "padding_side": "left",
            "remove_space": False,
            "do_lower_case": False,
            "eos_token": "</s>",
            "pad_token": "<unk>",
            "glmtune_special_tokens": self.special_tokens,
            "glmtune_family": self.family_name,
        }
        (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def find_tokenizer(*candidates: str | os.PathLike | None,
                   hint: str = "pass --tokenizer DIR (the base model's folder)") -> Path:
    """The tokenizer file of the first candidate that has one: a ``tokenizer.model`` file, or a folder holding it.

    ``None`` candidates are skipped, so callers pass ``--tokenizer`` first and
    then the folders that may hold one (model, adapter, prefix).
    """
    for candidate in candidates:
        if candidate is None:
            continue
        path = Path(candidate)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if path.is_file():
            return path
    shown = ", ".join(str(c) for c in candidates if c is not None)
    raise TokenizerError(f"no {TOKENIZER_FILE} in {shown} (expected a SentencePiece {TOKENIZER_FILE}, or a folder "
                         "holding one)" + (f"; {hint}" if hint else ""))


def find_tokenizer_file(path: str | os.PathLike) -> Path:
    """``path`` itself if it is a file, else ``path/tokenizer.model``."""
    return find_tokenizer(path, hint="")


def load_tokenizer(path: str | os.PathLike) -> ChatGLMTokenizer:
    """Load the ChatGLM3 tokenizer from a model folder or a ``tokenizer.model`` file."""
    return ChatGLMTokenizer(find_tokenizer_file(path))


def train_tokenizer(texts: list[str], out_dir: str | os.PathLike, *, vocab_size: int = 2000) -> ChatGLMTokenizer:
    """Train a small SentencePiece model from ``texts`` (for demos with no real tokenizer).

    Settings follow ChatGLM3's: BPE, byte fallback, whitespace kept verbatim,
    ids 0/1/2 = unk/bos/eos, so every glmtune code path works unchanged.
    """


    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        user_defined_symbols=["\n", "\t"],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
        hard_vocab_limit=False,
    )
    (out_dir / TOKENIZER_FILE).write_bytes(buf.getvalue())
    tok = ChatGLMTokenizer(out_dir / TOKENIZER_FILE)
    tok.save_pretrained(out_dir)
    return tok
