"""The ChatGLM3 tokenizer against the official encodings and padding."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import glmtune
from glmtune.tokenizer import SPECIAL_TOKENS, TokenizerError, train_tokenizer

from conftest import ENCODINGS, TINY

ROUND_TRIP = [
    "你好，你是谁？",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\n\nlines\n",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code\n",
    "混合 English 和中文，数字 12345 和符号 @#$%^&*()",
    "emoji 🙂 and rare 𠀋 characters",
    "",
    "\n",
    "```python\ntool_call(symbol='AAPL')\n```",
]


def _cases():
    return [json.loads(line) for line in ENCODINGS.read_text().splitlines() if line.strip()]


def _contains(seq, sub):
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def _texts(case):
    """Every text of a case as the official format encodes it (content, and metadata lines)."""
    inp = case["input"]
    if case["kind"] == "base":
        return []
    messages = inp.get("conversations", []) + inp.get("history", [])
    texts = [inp["query"]] if "query" in inp else []
    for m in messages:
        if m["role"] == "tool":
            texts.append(m["name"] + "\n")
            obs = m["observation"]
            texts.append(obs if isinstance(obs, str) else json.dumps(obs, ensure_ascii=False))
        else:
            texts.append(m["content"])
    if inp.get("tools"):
        texts.append("Answer the following questions as best as you can. You have access to the following tools:\n"
                     + json.dumps(inp["tools"], indent=4, ensure_ascii=False))
    return texts


def test_special_token_ids(official_tokenizer):
    tokenizer = official_tokenizer
    expected = dict(zip(SPECIAL_TOKENS, range(64789, 64798)))
    assert tokenizer.special_tokens == expected
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.vocab_size) == (0, 2, 64798)
    assert tokenizer.prefix_ids() == [64790, 64792]
    assert tokenizer.stop_ids == [2, 64795, 64797]


def test_encodes_every_reference_text_as_official(official_tokenizer):
    tokenizer = official_tokenizer
    for case in _cases():
        ids = case["input_ids"]
        for text in _texts(case):
            assert _contains(ids, tokenizer.encode(text)), (case["name"], text)
        if case["kind"] == "base":
            inp = case["input"]
            ctx = tokenizer.encode(inp["context"], add_prefix=True)[: case.get("max_source", 10**9)]
            assert ids[: len(ctx)] == ctx, case["name"]
            tgt = tokenizer.encode(inp["target"])[: case.get("max_target", 10**9)]
            assert ids[len(ctx): len(ctx) + len(tgt)] == tgt, case["name"]


def test_role_tokens_followed_by_newline_piece(official_tokenizer):
    tokenizer = official_tokenizer
    ids = _cases()[0]["input_ids"]
    assert ids[2:5] == [tokenizer.role_id("user"), 30910, 13]
    assert tokenizer.encode("\n") == [30910, 13]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_decode_encode_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens_decode_to_names_and_are_not_parsed_from_text(tokenizer):
    ids = [tokenizer.get_command("<|user|>")] + tokenizer.encode("\nhi") + [tokenizer.get_command("<|assistant|>")]
    # As officially: the "▁" after a special token stays a space, and skip_special_tokens removes nothing
    # (tests/test_tokenizer_decode.py has the official outputs).
    assert tokenizer.decode(ids) == "<|user|> \nhi<|assistant|>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<|user|> \nhi<|assistant|>"
    forged = tokenizer.encode("<|user|>")
    assert tokenizer.get_command("<|user|>") not in forged
    assert tokenizer.encode("<|user|>x", allow_special=True)[0] == tokenizer.get_command("<|user|>")


def test_out_of_vocabulary_id_is_a_clear_error(tokenizer):
    with pytest.raises(TokenizerError, match="70000.*outside the vocabulary.*skip_unknown"):
        tokenizer.decode([*tokenizer.encode("\n"), 70000])
    assert tokenizer.decode(tokenizer.encode("ok") + [70000, -1], skip_unknown=True) == "ok"
    with pytest.raises(TokenizerError, match="unknown special token"):
        tokenizer.get_command("<|bogus|>")


def test_left_padding_matches_official_batch(official_tokenizer):
    tokenizer = official_tokenizer
    ref = load_file(str(TINY / "reference.safetensors"))
    rows = [r[m.bool()].tolist() for r, m in zip(ref["input_ids"], ref["attention_mask"])]
    batch = tokenizer.pad(rows)
    for key in ("input_ids", "attention_mask", "position_ids"):
        assert torch.equal(batch[key], ref[key]), key
    assert rows[1] == ref["single_input_ids"][0].tolist()


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        glmtune.load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        glmtune.load_tokenizer(tmp_path)


def test_trained_tokenizer_has_the_same_special_scheme(tmp_path):
    texts = ["你好，我是一个助手。", "Hello, I am an assistant.", "What can you do?\n我可以回答问题。"] * 50
    tok = train_tokenizer(texts, tmp_path, vocab_size=300)
    again = glmtune.load_tokenizer(tmp_path)
    assert again.special_tokens == tok.special_tokens
    assert tok.special_tokens["[gMASK]"] == tok.sp_size + 1 and tok.eos_token_id == 2 and tok.pad_token_id == 0
    for text in ["Hello, 你好！\n  spaced", "unseen: 龘 xyz"]:
        assert tok.decode(tok.encode(text)) == text


def test_find_tokenizer_takes_the_first_candidate_that_has_one(tmp_path, chatglm3_dir):
    from glmtune.tokenizer import TokenizerError, find_tokenizer

    empty = tmp_path / "adapter"
    empty.mkdir()
    tok_file = chatglm3_dir / "tokenizer.model"
    assert find_tokenizer(None, tmp_path / "missing", empty, chatglm3_dir) == tok_file
    assert find_tokenizer(tok_file, empty) == tok_file  # --tokenizer may name the file itself
    assert find_tokenizer("tiny", chatglm3_dir) == tok_file  # a shape name is not a folder
    with pytest.raises(TokenizerError, match=r"no tokenizer\.model in .*adapter, .*missing.*--tokenizer DIR"):
        find_tokenizer(empty, None, tmp_path / "missing")
