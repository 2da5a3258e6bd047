"""ChatGLM3's tokenizer as standard Hugging Face files: ``tokenizer.json`` + ``tokenizer_config.json``.

``transformers.AutoTokenizer.from_pretrained(folder)`` loads what
:func:`save_hf_tokenizer` writes without ``trust_remote_code`` (so do vLLM,
SGLang and TGI), and it behaves as glmtune's :class:`~glmtune.tokenizer.ChatGLMTokenizer`:

* ``tok(text)`` = ``encode(text, add_prefix=True)``: like THUDM's tokenizer,
  the post-processor puts ``[gMASK] sop`` first (what a base model is fed);
  ``add_special_tokens=False`` gives ``encode(text)``.
* Special-token names in text (``<|user|>``, ``[gMASK]``, ``</s>``...) are read
  as those tokens, which a chat template needs; ``split_special_tokens=True``
  reads them as plain text, as ``encode`` does. ``sop``/``eop`` only match as
  whole words, so "philosophy" or "people" stay text.
* ``decode(ids)`` = ``decode(ids)``: special tokens decode to their names,
  eos/bos/pad to nothing, and the space after a special token stays.
  ``skip_special_tokens=True`` drops the special tokens (the standard meaning,
  which serving engines rely on); THUDM's tokenizer removes nothing there.
* ``apply_chat_template(messages, tools=..., add_generation_prompt=True)``
  gives :func:`glmtune.data.chat_format.build_prompt`'s ids (the official
  ``build_chat_input``), for ChatGLM3 history dicts and OpenAI-shaped messages.

The SentencePiece model converts exactly (BPE, byte fallback, identity
normalization, a dummy "▁" before each text span); a model with other
settings is refused rather than converted approximately.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .data.chat_format import TOOLS_PROMPT
from .errors import GlmtuneError

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class TokenizerExportError(GlmtuneError, ValueError):
    """The SentencePiece model cannot be written as an exact ``tokenizer.json``."""

_SPACE = "\u2581"  # SentencePiece's "▁"


# -- reading the SentencePiece model (a protobuf, read by hand: protobuf is no dependency) ----
def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(data: bytes):
    """(field number, value) of a protobuf message: ints for varints, bytes for the rest."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i:i + size], i + size
        else:
            size = {1: 8, 5: 4}.get(wire)
            if size is None:
                raise ValueError(f"unsupported protobuf wire type {wire}")
            value, i = data[i:i + size], i + size
        yield key >> 3, value


def sp_model_settings(model_file: Path) -> dict:
    """What a faithful conversion depends on: model type, normalizer, byte fallback, user-defined pieces."""
    # Field numbers of sentencepiece_model.proto (ModelProto, TrainerSpec, NormalizerSpec, SentencePiece).
    out = {"model_type": 1, "byte_fallback": False, "normalizer": "nmt_nfkc", "charsmap": b"",
           "add_dummy_prefix": True, "remove_extra_whitespaces": True, "user_defined": []}
    for number, value in _fields(Path(model_file).read_bytes()):
        if number == 1:  # a piece: 1 text, 3 type (4 = user defined)
            piece = dict(_fields(value))
            if piece.get(3) == 4:
                out["user_defined"].append(piece.get(1, b"").decode("utf-8"))
        elif number == 2:
            trainer = dict(_fields(value))
            out["model_type"], out["byte_fallback"] = trainer.get(3, 1), bool(trainer.get(35, 0))
        elif number == 3:
            norm = dict(_fields(value))
            out["normalizer"] = norm.get(1, b"").decode("utf-8")
            out["charsmap"] = norm.get(2, b"")
            out["add_dummy_prefix"] = bool(norm.get(3, 1))
            out["remove_extra_whitespaces"] = bool(norm.get(4, 1))
    return out


def _check_convertible(model_file: Path) -> None:
    try:
        s = sp_model_settings(model_file)
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise TokenizerExportError(f"{model_file}: cannot read the SentencePiece model ({exc})") from None
    problems = []
    if s["model_type"] != 2:
        problems.append("it is not a BPE model")
    if s["normalizer"] != "identity" or s["charsmap"] or s["remove_extra_whitespaces"] or not s["add_dummy_prefix"]:
        problems.append("its normalizer is not ChatGLM's (identity, whitespace kept, dummy prefix)")
    if any(len(p) > 1 for p in s["user_defined"]):
        problems.append("it has multi-character user-defined pieces")
    if problems:
        raise TokenizerExportError(f"{model_file}: cannot write an exact tokenizer.json: {'; '.join(problems)}; "
                             "export with --layout chatglm3 (THUDM's tokenizer files) instead")


# -- tokenizer.json -----------------------------------------------------------------------
def _merges(vocab: dict[str, int], skip: set[str]) -> list[tuple[str, str]]:
    """BPE merges in SentencePiece's order: a piece's score falls with its id, so the rank is the id.

    Control, unknown and byte pieces are never the result of a merge in SentencePiece, so they
    get none (otherwise the text "</s>" would merge into the eos piece).
    """
    merges = []
    for piece in vocab:  # in id order
        if piece in skip:
            continue
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab and piece[:k] not in skip and piece[k:] not in skip]
        merges += sorted(local, key=lambda lr: (len(lr[0]), len(lr[1]), vocab[lr[0]], vocab[lr[1]]))
    return merges


def build_tokenizer_json(tok):
    """A ``tokenizers.Tokenizer`` that encodes and decodes as ``tok``, a :class:`glmtune.tokenizer.ChatGLMTokenizer`."""
    # Deferred: tokenizers is only needed to export or to build the transformers tokenizer.
    # deferred: only the Hugging Face tokenizer export needs tokenizers
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    _check_convertible(tok.model_file)
    sp = tok.sp
    vocab = {sp.id_to_piece(i): i for i in range(tok.sp_size)}
    skip = {sp.id_to_piece(i) for i in range(tok.sp_size) if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)}
    unk = sp.id_to_piece(tok.pad_token_id)
    model = BPE(vocab, _merges(vocab, skip), unk_token=unk, fuse_unk=True, byte_fallback=True)
    hf = Tokenizer(model)
    hf.normalizer = normalizers.Sequence([normalizers.Prepend(_SPACE), normalizers.Replace(" ", _SPACE)])
    # ASCII byte pieces decode on their own: ByteFallback turns a whole run of byte pieces into one "\ufffd"
    # per byte when any is invalid, where SentencePiece keeps the valid "\n" of [<0x8D>, <0x0A>].
    ascii_bytes = [decoders.Replace(f"<0x{b:02X}>", chr(b)) for b in range(128) if f"<0x{b:02X}>" in vocab]
    # eos, bos and pad decode to nothing, as in THUDM's SPTokenizer.convert_id_to_token.
    silent = {sp.id_to_piece(i) for i in (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) if i >= 0}
    hf.decoder = decoders.Sequence([*(decoders.Replace(s, "") for s in sorted(silent)), *ascii_bytes,
                                    decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    controls = [AddedToken(sp.id_to_piece(i), special=True, normalized=False)
                for i in range(tok.sp_size) if sp.is_control(i) or sp.is_unknown(i)]
    # "sop"/"eop" are also common letters ("philosophy", "people"): only whole words are the tokens.
    names = list(tok.special_tokens)  # in id order, from tok.sp_size on
    specials = [AddedToken(t, special=True, normalized=False, single_word=t.isalpha()) for t in names]
    hf.add_special_tokens(controls)
    hf.add_special_tokens(specials)
    if hf.get_vocab_size() != tok.vocab_size or hf.token_to_id(names[0]) != tok.sp_size:
        raise TokenizerExportError(f"{tok.model_file}: special tokens did not land at ids {tok.sp_size}..; cannot export")
    eos = sp.id_to_piece(tok.eos_token_id)
    prefix = [("[gMASK]", tok.get_command("[gMASK]")), ("sop", tok.get_command("sop")), (eos, tok.eos_token_id)]
    # As THUDM's build_inputs_with_special_tokens: [gMASK] sop first; a pair ends with eos.
    hf.post_processor = processors.TemplateProcessing(single="[gMASK] sop $A", pair=f"[gMASK] sop $A $B {eos}",
                                                      special_tokens=prefix)
    return hf


def tokenizer_config(tok) -> dict:
    """``tokenizer_config.json`` for ``PreTrainedTokenizerFast`` (transformers 4.x and 5.x alike)."""
    sp = tok.sp
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": sp.id_to_piece(tok.eos_token_id),
        "pad_token": sp.id_to_piece(tok.pad_token_id),
        "unk_token": sp.id_to_piece(tok.pad_token_id),
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        # GlmForCausalLM takes no token_type_ids, so tok(...) must not return them.
        "model_input_names": ["input_ids", "attention_mask"],
        "glmtune_family": tok.family_name,
        # A family's tokenizer may carry its own template (ChatGLM2's [Round N]); ChatGLM3's is the default.
        "chat_template": getattr(tok, "chat_template", CHAT_TEMPLATE),
    }


def save_hf_tokenizer(tok, out_dir: str | os.PathLike) -> list[str]:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``out_dir``; returns the names written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer_json(tok).save(str(out_dir / "tokenizer.json"))
    config = json.dumps(tokenizer_config(tok), indent=2, ensure_ascii=False) + "\n"
    (out_dir / "tokenizer_config.json").write_text(config, encoding="utf-8")
    return list(HF_TOKENIZER_FILES)


def load_hf_tokenizer(tok):
    """A ``transformers.PreTrainedTokenizerFast`` equivalent to ``tok`` (a ChatGLMTokenizer), built in memory.

    The result is what ``AutoTokenizer.from_pretrained`` gives on an export; ``ChatGLMTokenizer.hf``
    holds one.
    """
    # Deferred: transformers is heavy and only this function needs it here.
    from transformers import PreTrainedTokenizerFast

    config = {k: v for k, v in tokenizer_config(tok).items() if k != "tokenizer_class"}
    return PreTrainedTokenizerFast(tokenizer_object=build_tokenizer_json(tok), **config)


# -- chat template ---------------------------------------------------------------------------
def _template_lines() -> list[str]:
    """ChatGLM3's prompt format as Jinja, one tag a line (joined without newlines: trim_blocks-proof)."""
    tools_prompt = json.dumps(TOOLS_PROMPT)
    return [
        # Python literal of a tool-call argument, as ast.unparse writes simple values.
        "{%- macro pyrepr(v) -%}",
        "{%- if v is string -%}",
        "{%- set s = v|replace('\\\\', '\\\\\\\\')|replace('\\n', '\\\\n')|replace('\\t', '\\\\t') -%}",
        "{%- if \"'\" in v and '\"' not in v -%}\"{{ s }}\"{%- else -%}'{{ s|replace(\"'\", \"\\\\'\") }}'{%- endif -%}",
        "{%- elif v is boolean -%}{{ 'True' if v else 'False' }}",
        "{%- elif v is none -%}None",
        "{%- elif v is mapping -%}{{ '{' }}{%- for k, x in v.items() -%}{{ pyrepr(k) }}: {{ pyrepr(x) }}"
        "{{ ', ' if not loop.last }}{%- endfor -%}{{ '}' }}",
        "{%- elif v is iterable -%}[{%- for x in v -%}{{ pyrepr(x) }}{{ ', ' if not loop.last }}{%- endfor -%}]",
        "{%- else -%}{{ v }}",
        "{%- endif -%}",
        "{%- endmacro -%}",
        # One message: role token, metadata + "\n", then the content as its own SentencePiece span
        # (its dummy "▁" written as a space), exactly build_single_message's ids.
        "{%- macro msg(role, metadata, content) -%}",
        "<|{{ role }}|>{{ metadata }}{{ '\\n' }}{%- if content -%}{{ ' ' ~ content }}{%- endif -%}",
        "{%- endmacro -%}",
        "{%- macro text(c) -%}",
        "{%- if c is string -%}{{ c }}{%- elif c is none -%}{%- else -%}"
        "{%- for p in c -%}{{ p.text }}{%- endfor -%}{%- endif -%}",
        "{%- endmacro -%}",
        "{%- macro call(c) -%}",
        "{%- set f = c.function if c.function is defined else c -%}",
        "{%- set args = f.arguments if f.arguments is defined else f.parameters -%}",
        "{%- if args is string -%}{{ raise_exception('tool call arguments must be a dict, not a JSON string') }}"
        "{%- endif -%}",
        "{%- set ns2 = namespace(body='') -%}",
        "{%- for k, v in (args or {}).items() -%}"
        "{%- set ns2.body = ns2.body ~ k ~ '=' ~ pyrepr(v) ~ (', ' if not loop.last else '') -%}{%- endfor -%}",
        "{{ msg('assistant', f.name, '```python\\ntool_call(' ~ ns2.body ~ ')\\n```') }}",
        "{%- endmacro -%}",
        "[gMASK]sop",
        "{%- set ns = namespace(pending=[], last='', tools=[]) -%}",
        "{%- if tools -%}",
        "{%- for t in tools -%}{%- set ns.tools = ns.tools + [t.function if t.function is mapping else t] -%}"
        "{%- endfor -%}",
        "{{ msg('system', '', " + tools_prompt + " ~ ns.tools|tojson(indent=4)) }}",
        "{%- endif -%}",
        "{%- for m in messages -%}",
        "{%- if m.role in ('tool', 'function') and m.parameters is defined -%}",
        # ChatGLM3's fine-tune format: {"role": "tool", "name", "parameters", "observation"}.
        "{{ call(m) }}{%- set o = m.observation -%}",
        "{{ msg('observation', '', o if o is string else o|tojson) }}",
        "{%- elif m.role in ('tool', 'function') -%}",
        # OpenAI's: the result of the next pending call of the last assistant message.
        "{%- if ns.pending -%}{{ call(ns.pending[0]) }}{%- set ns.pending = ns.pending[1:] -%}{%- endif -%}",
        "{{ msg('observation', '', text(m.content)) }}",
        "{%- else -%}",
        "{%- for c in ns.pending -%}{{ call(c) }}{%- endfor -%}{%- set ns.pending = [] -%}",
        "{%- set role = 'system' if m.role == 'developer' else m.role -%}",
        "{%- set content = text(m.content) -%}",
        "{%- if role == 'system' and m.tools is defined and m.tools is not none -%}"
        "{%- set content = content ~ '\\n' ~ m.tools|tojson(indent=4) -%}{%- endif -%}",
        "{%- if content or not m.tool_calls -%}{{ msg(role, m.metadata or '', content) }}{%- endif -%}",
        "{%- if m.tool_calls -%}{%- set ns.pending = m.tool_calls -%}{%- endif -%}",
        "{%- endif -%}",
        "{%- set ns.last = m.role -%}",
        "{%- endfor -%}",
        "{%- for c in ns.pending -%}{{ call(c) }}{%- endfor -%}",
        "{%- if add_generation_prompt -%}<|assistant|>",
        # A finished conversation ends with eos, as the official fine-tune sequences do.
        "{%- elif ns.last == 'assistant' -%}</s>",
        "{%- endif -%}",
    ]


CHAT_TEMPLATE = "".join(_template_lines())
