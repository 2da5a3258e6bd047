"""The GLM-4 tokenizer (THUDM ``ChatGLM4Tokenizer``) on ``tokenizers``, with no remote code and no tiktoken.

The official tokenizer is tiktoken over a rank file (``tokenizer.model``: one base64 token and its rank a
line) with GPT-4's pre-tokenizer regex, and 14 special tokens appended after the ranks (151329.. for
the real file). A byte-level BPE whose merges are ordered by the rank of the merged token, with
``ignore_merges`` (a piece that is itself a token is taken whole, as tiktoken does), encodes every
string to the same ids (checked against tiktoken on random text and on the fixtures).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

from ..tokenizer import ChatGLMTokenizer, TokenizerError
from .glm4_template import CHAT_TEMPLATE

TOKENIZER_FILE = "tokenizer.model"
SPECIAL_TOKENS = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
    "<|end_of_video|>",
)
# ChatGLM4Tokenizer's pat_str (GPT-4's cl100k pattern).
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")


# -- the rank file -> a tokenizers BPE ----------------------------------------------------------
def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table (what byte-level BPE vocabularies are written in)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def read_ranks(path: Path, data: bytes | None = None) -> list[bytes]:
    """The token bytes of a tiktoken rank file (``data``: its bytes, if already read), indexed by rank (0..n-1)."""
    ranks: dict[int, bytes] = {}
    try:
        for line in (Path(path).read_bytes() if data is None else data).splitlines():
            if not line.strip():
                continue
            token, rank = line.split()
            ranks[int(rank)] = base64.b64decode(token, validate=True)
    except (OSError, ValueError, binascii.Error) as exc:
        raise TokenizerError(f"{path}: not a tiktoken rank file (base64 token, space, rank on each line) "
                             f"({type(exc).__name__}: {exc})") from None
    if sorted(ranks) != list(range(len(ranks))) or len(set(ranks.values())) != len(ranks):
        raise TokenizerError(f"{path}: the ranks are not 0..{len(ranks) - 1} over distinct tokens; "
                             "is this GLM-4's tokenizer.model?")
    return [ranks[i] for i in range(len(ranks))]


def _merges(tokens: list[bytes], rank: dict[bytes, int], chars: list[str]) -> list[tuple[str, str]]:
    """BPE merges in tiktoken's priority: by the rank of the merged token (transformers' TikTokenConverter)."""
    found = []
    for r, token in enumerate(tokens):
        local = [(rank[token[:k]], rank[token[k:]]) for k in range(1, len(token))
                 if token[:k] in rank and token[k:] in rank]
        found += [(r, lr) for lr in sorted(local)]
    found.sort(key=lambda item: item[0])
    text = ["".join(chars[b] for b in t) for t in tokens]
    return [(text[left], text[right]) for _, (left, right) in found]


def build_bpe(tokens: list[bytes]):
    """A ``tokenizers.Tokenizer`` (no special tokens) encoding text as tiktoken does with these ranks."""
    # Deferred: tokenizers loads a native library; only building a GLM-4 tokenizer needs it.
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    chars = _byte_chars()
    rank = {t: i for i, t in enumerate(tokens)}
    vocab = {"".join(chars[b] for b in t): i for i, t in enumerate(tokens)}
    bpe = Tokenizer(BPE(vocab, _merges(tokens, rank, chars), fuse_unk=False, ignore_merges=True))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    return bpe


_CACHE: dict[str, tuple[list[bytes], str]] = {}
_CACHE_LOCK = threading.Lock()
_HF_LOCK = threading.Lock()  # module-level: a tokenizer object stays picklable


def _load_bpe(path: Path) -> tuple[list[bytes], str]:
    """(token bytes, BPE tokenizer JSON) of a rank file; the build (~2 s for 151k ranks) is done once per content."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read the tokenizer file ({exc})") from None
    key = hashlib.sha256(data).hexdigest()
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is None:
            if data.lstrip()[:1] == b"{":
                hit = _CACHE[key] = read_tokenizer_json(path, data)
            else:
                tokens = read_ranks(path, data)
                hit = _CACHE[key] = (tokens, build_bpe(tokens).to_str())
    return hit


def read_tokenizer_json(path: Path, data: bytes) -> tuple[list[bytes], str]:
    """(token bytes, BPE JSON without special tokens) of a GLM-4 ``tokenizer.json`` (the ``-hf`` folders, exports).

    Its byte-level BPE is used as it is; its added tokens must be GLM-4's 14 special tokens, right after it.
    """
    try:
        spec = json.loads(data.decode("utf-8"))
        vocab = spec["model"]["vocab"]
        added = {t["content"]: t["id"] for t in spec.get("added_tokens") or []}
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise TokenizerError(f"{path}: not a tokenizers BPE tokenizer.json ({type(exc).__name__}: {exc})") from None
    byte_of = {c: b for b, c in enumerate(_byte_chars())}
    n = len(vocab)
    if sorted(vocab.values()) != list(range(n)) or any(ch not in byte_of for t in vocab for ch in t):
        raise TokenizerError(f"{path}: its vocabulary is not a byte-level BPE numbered 0..{n - 1}; "
                             "not a GLM-4 tokenizer.json")
    wrong = [t for i, t in enumerate(SPECIAL_TOKENS) if added.get(t) != n + i]
    if wrong:
        raise TokenizerError(f"{path}: GLM-4's special tokens {', '.join(wrong)} are not at ids {n}..{n + 13}; "
                             "not a GLM-4 tokenizer.json (set model.family if it is another model's)")
    tokens = [b""] * n
    for text, i in vocab.items():
        tokens[i] = bytes(byte_of[ch] for ch in text)
    # Special-token names in text stay text in encode(): the plain BPE carries no added tokens.
    spec["added_tokens"], spec["post_processor"] = [], None
    return tokens, json.dumps(spec, ensure_ascii=False)


def write_ranks(tokens: list[bytes], path: Path) -> None:
    """A tiktoken rank file of ``tokens`` (what ChatGLM4Tokenizer reads)."""
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(tokens)))


def _bpe_from_json(text: str):
    from tokenizers import Tokenizer  # deferred: see build_bpe

    return Tokenizer.from_str(text)


def with_specials(bpe, tokens: list[bytes]):
    """``bpe`` with the 14 special tokens added at ``len(tokens)``.. (read as tokens in text)."""
    # Deferred: see build_bpe.
    from tokenizers import AddedToken, processors

    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    if bpe.token_to_id(SPECIAL_TOKENS[0]) != len(tokens):
        raise TokenizerError("GLM-4 special tokens did not land after the ranks; the rank file has holes")
    prefix = [(t, len(tokens) + SPECIAL_TOKENS.index(t)) for t in ("[gMASK]", "<sop>", "<|endoftext|>")]
    # As ChatGLM4Tokenizer.build_inputs_with_special_tokens: [gMASK] <sop> first.
    bpe.post_processor = processors.TemplateProcessing(single="[gMASK] <sop> $A",
                                                       pair="[gMASK] <sop> $A $B <|endoftext|>",
                                                       special_tokens=prefix)
    return bpe


# -- the tokenizer ---------------------------------------------------------------------------------------
class GLM4Tokenizer:
    """GLM-4 tokenizer with :class:`glmtune.tokenizer.ChatGLMTokenizer`'s interface; ids and text as the official.

    ``encode`` turns text into BPE ids only (no ``[gMASK] <sop>``; :meth:`prefix_ids` gives it) and reads
    special-token names in text as plain text (the official ``encode_special_tokens=False``).
    """

    padding_side = "left"
    special_token_names = SPECIAL_TOKENS
    family_name = "glm4"
    """The model family whose format this tokenizer serves (``glmtune.families``)."""

    def __init__(self, model_file: str | os.PathLike, *, chat_template: str | None = None):
        model_file = Path(model_file)
        if not model_file.is_file():
            raise TokenizerError(f"{model_file}: tokenizer file not found (expected GLM-4's tiktoken {TOKENIZER_FILE})")
        self.model_file = model_file
        self._tokens, self._bpe_json = _load_bpe(model_file)
        self._bpe = _bpe_from_json(self._bpe_json)
        self.n_ranks = len(self._tokens)
        self.special_tokens = {t: self.n_ranks + i for i, t in enumerate(SPECIAL_TOKENS)}
        self.index_special_tokens = {i: t for t, i in self.special_tokens.items()}
        self.eos_token_id = self.pad_token_id = self.special_tokens["<|endoftext|>"]
        self.bos_token_id = None
        self._chat_template = chat_template
        self._hf = None

    # -- the transformers tokenizer ------------------------------------------
    @property
    def chat_template(self) -> str:
        """The folder's own template when it had one, else glmtune's equivalent of the official one."""
        if self._chat_template is None:
            self._chat_template = CHAT_TEMPLATE
        return self._chat_template

    @property
    def hf(self):
        """The equivalent ``transformers.PreTrainedTokenizerFast`` (same ids, same text, the chat template)."""
        with _HF_LOCK:
            if self._hf is None:
                # Deferred: transformers is heavy and only this property needs it here.
                from transformers import PreTrainedTokenizerFast

                backend = with_specials(_bpe_from_json(self._bpe_json), self._tokens)
                self._hf = PreTrainedTokenizerFast(tokenizer_object=backend, **self._hf_config())
            return self._hf

    def _hf_config(self) -> dict:
        return {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "padding_side": "left",
                "clean_up_tokenization_spaces": False, "model_input_names": ["input_ids", "attention_mask"],
                "chat_template": self.chat_template}

    # tok(text), apply_chat_template (GLM-4's template: the ids of build_prompt) and batch_decode delegate as
    # ChatGLM3's do.
    __call__ = ChatGLMTokenizer.__call__
    apply_chat_template = ChatGLMTokenizer.apply_chat_template
    batch_decode = ChatGLMTokenizer.batch_decode

    # -- vocabulary -----------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.n_ranks + len(SPECIAL_TOKENS)

    # The same lookups as ChatGLM3's tokenizer (special_token_names / special_tokens / eos_token_id are ours);
    # stop_ids: <|endoftext|>, <|user|>, <|observation|>.
    __len__ = ChatGLMTokenizer.__len__
    get_command = ChatGLMTokenizer.get_command
    role_id = ChatGLMTokenizer.role_id
    stop_ids = ChatGLMTokenizer.stop_ids

    def prefix_ids(self) -> list[int]:
        """``[gMASK] <sop>``, which starts every GLM-4 sequence."""
        return [self.special_tokens["[gMASK]"], self.special_tokens["<sop>"]]

    # -- encode / decode ------------------------------------------------------
    def encode(self, text: str, *, add_prefix: bool = False, allow_special: bool = False) -> list[int]:
        """BPE ids of ``text``; ``allow_special=True`` reads special-token names as those tokens."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        ids = self.prefix_ids() if add_prefix else []
        if allow_special:
            return ids + self.hf.backend_tokenizer.encode(text, add_special_tokens=False).ids
        return ids + self._bpe.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """:meth:`encode` of each text (in parallel, natively)."""
        return [e.ids for e in self._bpe.encode_batch(list(texts), add_special_tokens=False)]

    def tokenize(self, text: str) -> list[str]:
        """Token strings of ``text`` in byte-level form (as the exported ``tokenizer.json`` writes them)."""
        return self._bpe.encode(text, add_special_tokens=False).tokens

    def decode(self, ids, *, skip_special_tokens: bool = False, skip_unknown: bool = False) -> str:
        """Text of ``ids`` exactly as the official tokenizer decodes them.

        Runs of BPE tokens are joined as bytes and decoded as UTF-8 (invalid bytes become U+FFFD);
        special tokens are their names, or nothing with ``skip_special_tokens`` (all 14 are special
        there, as officially). An id outside the vocabulary raises :class:`TokenizerError` naming it,
        unless ``skip_unknown=True``.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        parts, run = [], b""
        for i in ids:
            i = int(i)
            if 0 <= i < self.n_ranks:
                run += self._tokens[i]
                continue
            if run:
                parts.append(run.decode("utf-8", errors="replace"))
                run = b""
            name = self.index_special_tokens.get(i)
            if name is None and not skip_unknown:
                raise TokenizerError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1}); "
                                     "pass skip_unknown=True to drop such ids")
            if name is not None and not skip_special_tokens:
                parts.append(name)
        if run:
            parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def convert_ids_to_tokens(self, ids) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if i in self.index_special_tokens:
                out.append(self.index_special_tokens[i])
            elif 0 <= i < self.n_ranks:
                out.append(self._bpe.id_to_token(i))
            else:
                out.append(f"<invalid:{i}>")
        return out

    # -- batching ----------------------------------------------------------------
    # The official left padding (pads: id 151329, attention 0, position 0; real tokens 0..n-1) is ChatGLM3's.
    pad = ChatGLMTokenizer.pad

    # -- files -------------------------------------------------------------------
    def save_hf(self, out_dir: str | os.PathLike) -> list[str]:
        """The standard Hugging Face files (what exports carry): :meth:`save_pretrained` already writes them."""
        return self.save_pretrained(out_dir)

    def save_pretrained(self, out_dir: str | os.PathLike) -> list[str]:
        """Write ``tokenizer.model`` (the rank file), ``tokenizer.json`` and a ``tokenizer_config.json``.

        ``AutoTokenizer.from_pretrained(out_dir)`` loads the result without remote code (a
        ``PreTrainedTokenizerFast`` with the chat template); glmtune reads it back as GLM-4.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.model_file.resolve() != (out_dir / TOKENIZER_FILE).resolve():
            if self.model_file.name == TOKENIZER_FILE:
                shutil.copyfile(self.model_file, out_dir / TOKENIZER_FILE)
            else:  # read from a tokenizer.json: the rank file is written from it
                write_ranks(self._tokens, out_dir / TOKENIZER_FILE)
        self.hf.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
        # glmtune's template, not the folder's: the same ids on every official prompt, and it also renders the
        # tools= and tool_calls that serving engines (vLLM, SGLang) pass, which THUDM's template ignores.
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **self._hf_config(), "chat_template": CHAT_TEMPLATE,
                  "glmtune_family": "glm4",
                  "added_tokens_decoder": {str(i): {"content": t, "special": True, "normalized": False,
                                                    "lstrip": False, "rstrip": False, "single_word": False}
                                           for t, i in self.special_tokens.items()}}
        text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
        (out_dir / "tokenizer_config.json").write_text(text, encoding="utf-8")
        return [TOKENIZER_FILE, "tokenizer.json", "tokenizer_config.json"]


def folder_chat_template(model_file: Path) -> str | None:
    """The chat template of the tokenizer_config.json beside ``model_file``, if it has one (a string)."""
    config = model_file.parent / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return template if isinstance(template, str) else None


def load_glm4_tokenizer(path: str | os.PathLike) -> GLM4Tokenizer:
    """A GLM-4 tokenizer from its rank file or tokenizer.json (or a folder holding one; the rank file first),
    with the folder's chat template if any."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE if (path / TOKENIZER_FILE).is_file() else path / "tokenizer.json"
    return GLM4Tokenizer(path, chat_template=folder_chat_template(path))
