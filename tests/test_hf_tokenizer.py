"""The standard tokenizer files of an export: ``AutoTokenizer`` (no remote code) behaves as glmtune's tokenizer.

Every test runs on the tokenizer trained in-process; the ``official`` variants also run the real
ChatGLM3 ``tokenizer.model`` and the official encodings (skipped, saying why, without ../shared/fixtures).
"""

from __future__ import annotations

import json
import random

import pytest

from glmtune.data.chat_format import build_prompt
from glmtune.data.formats import openai_conversation
from glmtune.hf_tokenizer import load_hf_tokenizer, save_hf_tokenizer

from conftest import ENCODINGS, need_fixtures
from test_tokenizer import ROUND_TRIP
from test_tokenizer_decode import OFFICIAL

_PIECES = ["你好", "世界", "混合", "中文", "𠀋", "🙂", "👍🏽", "é", "ß", "Hello", "world", "code", "x", "42", "3.14",
           " ", "  ", "\n", "\n\n", "\t", " \n ", "▁", "<|user|>", "<|assistant|>", "[gMASK]", "[MASK]", "sop",
           "eop", "</s>", "<s>", "<unk>", "<0x0A>", "philosophy", "people", "```python", "'", '"', "\\", "{}", "<", ">"]


def random_texts(n: int = 150, seed: int = 0) -> list[str]:
    """Mixed CJK/ASCII/whitespace/emoji/special-looking strings (fixed seed)."""
    rng = random.Random(seed)
    return ["".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def _load(tok, folder):
    from transformers import AutoTokenizer

    save_hf_tokenizer(tok, folder)
    return AutoTokenizer.from_pretrained(folder)  # no trust_remote_code


@pytest.fixture(scope="module", params=["trained", "official"])
def pair(request, tmp_path_factory):
    """(glmtune tokenizer, the transformers tokenizer loaded from its exported files)."""
    if request.param == "official":
        need_fixtures()
    tok = request.getfixturevalue(f"{request.param}_tokenizer")
    return tok, _load(tok, tmp_path_factory.mktemp(f"hf-{request.param}"))


def _ids(hf, messages, **kw):
    return hf.apply_chat_template(messages, tokenize=True, return_dict=False, **kw)


def test_loads_without_remote_code_with_chatglm3_ids(pair, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok, hf = pair
    assert isinstance(hf, PreTrainedTokenizerFast)
    assert (len(hf), hf.eos_token_id, hf.pad_token_id, hf.padding_side) == (tok.vocab_size, 2, 0, "left")
    assert [hf.convert_tokens_to_ids(t) for t in tok.special_tokens] == list(tok.special_tokens.values())
    save_hf_tokenizer(tok, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "auto_map" not in config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_encode_decode_as_glmtune_on_the_tokenizer_test_strings(pair, text):
    tok, hf = pair
    assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    # As THUDM's tokenizer: tok(text) puts [gMASK] sop first.
    assert hf(text)["input_ids"] == tok.encode(text, add_prefix=True)
    assert hf.decode(tok.encode(text, add_prefix=True)) == tok.decode(tok.encode(text, add_prefix=True))


def test_encode_decode_as_glmtune_on_random_strings(pair):
    tok, hf = pair
    for text in random_texts():
        ids = tok.encode(text)
        # split_special_tokens=True reads "<|user|>", "sop", "</s>" in text as text, as glmtune's encode does.
        assert hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == ids, text
        assert hf.decode(ids) == tok.decode(ids), text
        assert hf.decode(tok.encode(text, allow_special=True)) == tok.decode(tok.encode(text, allow_special=True))


def test_decode_as_glmtune_on_random_ids(pair):
    tok, hf = pair
    rng = random.Random(1)
    specials = list(tok.special_tokens.values()) + [0, 1, 2]
    for _ in range(300):
        ids = [rng.choice(specials) if rng.random() < 0.3 else rng.randrange(tok.sp_size)
               for _ in range(rng.randint(0, 12))]
        assert hf.decode(ids) == tok.decode(ids), ids


def test_decode_matches_the_official_tokenizer(official_tokenizer):
    hf = load_hf_tokenizer(official_tokenizer)  # the in-memory equivalent of the exported files
    for ids, text in OFFICIAL:
        assert hf.decode(ids) == text, ids


def test_special_names_parse_as_tokens_only_as_a_template_needs(pair):
    tok, hf = pair
    user, sop = tok.get_command("<|user|>"), tok.get_command("sop")
    ids = hf("<|user|>\nhi", add_special_tokens=False)["input_ids"]
    assert ids == [user] + tok.encode("\nhi") == tok.encode("<|user|>\nhi", allow_special=True)
    # "sop"/"eop" inside words stay text, so user content about philosophy or people is not split.
    for word in ("philosophy", "people", "sopranos"):
        assert hf(word, add_special_tokens=False)["input_ids"] == tok.encode(word)
    assert hf("[gMASK]sop<|user|>", add_special_tokens=False)["input_ids"] == tok.prefix_ids() + [user]
    assert sop in hf("[gMASK]sop", add_special_tokens=False)["input_ids"]


def test_skip_special_tokens_drops_them(pair):
    tok, hf = pair
    ids = tok.encode("hi", add_prefix=True) + [tok.get_command("<|user|>"), tok.eos_token_id]
    assert hf.decode(ids) == tok.decode(ids) == "[gMASK]sop hi<|user|>"
    assert hf.decode(ids, skip_special_tokens=True) == "hi"


def test_batch_padding_is_left_like_glmtune(pair):
    tok, hf = pair
    texts = ["a", "longer text here, 你好"]
    batch = hf(texts, padding=True, return_tensors="pt")
    ref = tok.pad([tok.encode(t, add_prefix=True) for t in texts])
    assert sorted(batch) == ["attention_mask", "input_ids"]  # GlmForCausalLM takes no token_type_ids
    assert batch["input_ids"].tolist() == ref["input_ids"].tolist()
    assert batch["attention_mask"].tolist() == ref["attention_mask"].tolist()


def test_chat_template_reproduces_every_official_encoding(official_tokenizer, tmp_path):
    hf = _load(official_tokenizer, tmp_path)
    cases = [json.loads(line) for line in ENCODINGS.read_text().splitlines() if line.strip()]
    checked = 0
    for case in cases:
        inp = case["input"]
        if case["kind"] == "prompt":
            messages = inp["history"] + [{"role": "user", "content": inp["query"]}]
            assert _ids(hf, messages, add_generation_prompt=True) == case["input_ids"], case["name"]
        elif case["kind"] == "chat":
            # A whole conversation (no generation prompt) ends with eos, as the official fine-tune sequences.
            assert _ids(hf, inp["conversations"], tools=inp.get("tools")) == case["input_ids"], case["name"]
        else:
            continue
        checked += 1
    assert checked == 5


_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "查询天气",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
_ARGS = [{"city": "北京"}, {}, {"city": "it's", "n": 3, "x": 1.5, "ok": True, "no": None, "l": [1, "a"], "d": {"k": "v"}},
         {"q": 'say "hi"'}, {"q": "back\\slash"}, {"q": "two\nlines\tand tab"}]


@pytest.mark.parametrize("args", _ARGS)
def test_chat_template_matches_glmtune_on_openai_messages_with_tools(pair, args):
    tok, hf = pair
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in 北京 and 上海?"}]},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": args}},
            {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "上海"}}}]},
        {"role": "tool", "tool_call_id": "a", "content": '{"temp": 5}'},
        {"role": "tool", "tool_call_id": "b", "content": "sunny"},
        {"role": "assistant", "content": "5 度，晴。"},
        {"role": "user", "content": "Thanks!"},
    ]
    for upto in (2, 5, 7):  # before, inside and after the tool round trip
        ref = build_prompt(openai_conversation(messages[:upto], _TOOLS), tok)
        assert _ids(hf, messages[:upto], tools=_TOOLS, add_generation_prompt=True) == ref, upto
    assert _ids(hf, messages[:2], add_generation_prompt=True) == build_prompt(openai_conversation(messages[:2]), tok)


def test_chat_template_matches_glmtune_on_chatglm3_history(pair):
    tok, hf = pair
    history = [
        {"role": "system", "content": "Answer the following questions as best as you can. You have access to the "
                                      "following tools:", "tools": [{"name": "track", "parameters": {}}]},
        {"role": "user", "content": "查一下 AAPL"},
        {"role": "assistant", "metadata": "track", "content": "```python\ntool_call(symbol='AAPL')\n```"},
        {"role": "observation", "content": '{"price": 189.5}'},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "  spaces\tand\nnew lines  "},
    ]
    assert _ids(hf, history, add_generation_prompt=True) == build_prompt(history, tok)
    text = hf.apply_chat_template(history[:2], tokenize=False, add_generation_prompt=True)
    assert text.startswith("[gMASK]sop<|system|>\n Answer") and text.endswith("<|user|>\n 查一下 AAPL<|assistant|>")


def test_string_arguments_are_a_clear_template_error(pair):
    from jinja2.exceptions import TemplateError

    _, hf = pair
    call = {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}]}
    with pytest.raises(TemplateError, match="arguments must be a dict"):
        hf.apply_chat_template([{"role": "user", "content": "x"}, call], tokenize=False)


def test_load_tokenizer_gives_a_transformers_tokenizer(trained_tokenizer_dir):
    from transformers import PreTrainedTokenizerFast

    import glmtune

    tok = glmtune.load_tokenizer(trained_tokenizer_dir)
    assert isinstance(tok.hf, PreTrainedTokenizerFast) and tok.hf is tok.hf  # built once
    # tok("...") works as THUDM's tokenizer (it raised TypeError before): [gMASK] sop + ids.
    assert tok("你好 hello")["input_ids"] == tok.encode("你好 hello", add_prefix=True)
    batch = tok(["a", "longer text"], padding=True, return_tensors="pt")
    ref = tok.pad([tok.encode(t, add_prefix=True) for t in ["a", "longer text"]])
    assert batch["input_ids"].tolist() == ref["input_ids"].tolist()
    history = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(history, add_generation_prompt=True, tokenize=True,
                                   return_dict=False) == build_prompt(history, tok)
    assert tok.batch_decode([tok.encode("a b"), []]) == ["a b", ""]
    assert tok.hf.decode(tok.encode("  x\n")) == tok.decode(tok.encode("  x\n"))


def test_a_model_that_cannot_convert_exactly_is_refused(tmp_path):
    """A unigram model with NFKC normalization (not ChatGLM's settings) is refused, not converted approximately."""
    import io

    from sentencepiece import SentencePieceTrainer

    from glmtune.hf_tokenizer import TokenizerExportError
    from glmtune.tokenizer import ChatGLMTokenizer

    buf = io.BytesIO()
    SentencePieceTrainer.train(sentence_iterator=iter(["hello world", "你好 世界", "ＡＢＣ abc"] * 20), model_writer=buf,
                               vocab_size=40, model_type="unigram", minloglevel=2, hard_vocab_limit=False)
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    with pytest.raises(TokenizerExportError, match=r"tokenizer.model: cannot write an exact tokenizer.json: it is not "
                                                   r"a BPE model; its normalizer.*--layout chatglm3"):
        save_hf_tokenizer(ChatGLMTokenizer(tmp_path / "tokenizer.model"), tmp_path / "out")
    assert not (tmp_path / "out" / "tokenizer.json").exists()
