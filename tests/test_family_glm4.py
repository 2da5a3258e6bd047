"""The GLM-4 family: tokenizer (tiktoken rank file on ``tokenizers``), fine-tune/prompt formats, tool calls,
detection, and the tiny GLM-4 checkpoint against the official outputs.

Conformance tests use ``../shared/fixtures`` (glm4-tiny, glm4-encodings.jsonl) and skip, saying why, when
it is absent; the tokenizer's BPE is also checked on a rank file trained in-process against a
transcription of tiktoken's algorithm, so that part never skips.
"""

from __future__ import annotations

import collections
import json
import random

import pytest
import regex

from glmtune.data.config import DataConfig
from glmtune.data.convert import convert_record, detect_format
from glmtune.data.encode import encode_sample
from glmtune.data.family_format import build_prompt, parse_reply, render_tool_call
from glmtune.data.messages import Conversation, Message, ToolCall
from glmtune.families import detect_family, family_of, load_tokenizer
from glmtune.families.glm4 import FAMILY, _detect
from glmtune.families.glm4_template import CHAT_TEMPLATE
from glmtune.families.glm4_tokenizer import PATTERN, SPECIAL_TOKENS, GLM4Tokenizer, load_glm4_tokenizer, write_ranks
from glmtune.tokenizer import TokenizerError

from conftest import FIXTURES

GLM4_TINY = FIXTURES / "glm4-tiny"
ENCODINGS = FIXTURES / "glm4-encodings.jsonl"


def need_glm4() -> None:
    if not GLM4_TINY.is_dir() or not ENCODINGS.is_file():
        pytest.skip(f"GLM-4 fixtures not found at {GLM4_TINY} / {ENCODINGS} (the official GLM-4 tokenizer, "
                    "tiny checkpoint and encodings); put ../shared/fixtures beside the project or set GLMTUNE_FIXTURES")


def cases(kind: str) -> list[dict]:
    if not ENCODINGS.is_file():
        return []
    return [c for c in map(json.loads, ENCODINGS.read_text(encoding="utf-8").splitlines()) if c["kind"] == kind]


def ids_of(case_list):
    return [c["name"] for c in case_list]


@pytest.fixture(scope="module")
def tok() -> GLM4Tokenizer:
    need_glm4()
    return load_tokenizer(GLM4_TINY)


@pytest.fixture(scope="module")
def own_template_tok(tok) -> GLM4Tokenizer:
    """The same rank file without the folder's tokenizer_config.json: glmtune's own chat template."""
    return GLM4Tokenizer(GLM4_TINY / "tokenizer.model")


def conversation(record: dict, prompt: bool = False) -> Conversation:
    """A GLM-4 data record read as glmtune reads any data file (format detected from its keys)."""
    return convert_record(record, detect_format(record, "case.jsonl", 1), "case.jsonl", 1, prompt=prompt)


# -- tiktoken's algorithm, transcribed (the reference the BPE is checked against) ----------------------
def tiktoken_encode(text: str, ranks: dict[bytes, int]) -> list[int]:
    """tiktoken's ``_byte_pair_merge``: per regex piece, a whole-token piece is taken as is; otherwise the
    adjacent pair whose concatenation has the lowest rank is merged, leftmost first, until none is left."""
    out = []
    for piece in regex.findall(PATTERN, text):
        parts = [bytes([b]) for b in piece.encode("utf-8")]
        if piece.encode("utf-8") in ranks:
            out.append(ranks[piece.encode("utf-8")])
            continue
        while len(parts) > 1:
            scored = [(ranks.get(parts[i] + parts[i + 1], 1 << 60), i) for i in range(len(parts) - 1)]
            rank, i = min(scored)
            if rank == 1 << 60:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        out += [ranks[p] for p in parts]
    return out


def train_ranks(text: str, merges: int) -> list[bytes]:
    """A small tiktoken rank file: the 256 bytes, then the most frequent adjacent pairs, as BPE training does."""
    words = [[bytes([b]) for b in w.encode("utf-8")] for w in regex.findall(PATTERN, text)]
    tokens = [bytes([b]) for b in range(256)]
    for _ in range(merges):
        pairs = collections.Counter((w[i], w[i + 1]) for w in words for i in range(len(w) - 1))
        if not pairs:
            break
        (a, b), _count = pairs.most_common(1)[0]
        tokens.append(a + b)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    w[i:i + 2] = [a + b]
                i += 1
    return tokens


SAMPLE = ("The quick brown fox's friends don't jump over 1234567 lazy dogs.\n\n你好，世界！今天北京天气晴，"
          "气温 5 到 15 度。\t  indented   code()\n{\"city\": \"北京\"} 😀🎉 naïve café ") * 3
ALPHABET = (list("abcdefgxyzABC0123456789 \n\t\r.,;:'\"!?-_()[]{}<>|/\\@#$%^&*+=~`") + list("你好世界北京天气。，？")
            + ["😀", "🎉", "👍🏽", "é", "ß", "Ω", "ж", "  ", "\n\n", "    ", "'s", "'ll", "'T", "<|user|>", "[gMASK]"])


def random_strings(n: int, seed: int = 0):
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[GLM4Tokenizer, dict[bytes, int]]:
    tokens = train_ranks(SAMPLE, 300)
    path = tmp_path_factory.mktemp("ranks") / "tokenizer.model"
    write_ranks(tokens, path)
    return GLM4Tokenizer(path), {t: i for i, t in enumerate(tokens)}


# -- tokenizer ----------------------------------------------------------------------------------------
def test_bpe_matches_tiktoken_algorithm_on_random_text(small):
    tok, ranks = small
    for text in random_strings(400) + [SAMPLE]:
        ids = tok.encode(text)
        assert ids == tiktoken_encode(text, ranks), repr(text)
        assert tok.decode(ids) == text


def test_special_tokens_follow_the_ranks_and_are_plain_text_by_default(small):
    tok, ranks = small
    n = len(ranks)
    assert tok.special_tokens == {t: n + i for i, t in enumerate(SPECIAL_TOKENS)}
    assert tok.prefix_ids() == [n + 2, n + 4] and tok.eos_token_id == tok.pad_token_id == n
    assert tok.stop_ids == [n, n + 7, n + 9] and tok.role_id("assistant") == n + 8 and len(tok) == n + 14
    text = "a<|user|>b"
    assert tok.encode(text) == tiktoken_encode(text, ranks)  # encode_special_tokens=False, as officially
    assert tok.encode(text, allow_special=True) == tiktoken_encode("a", ranks) + [n + 7] + tiktoken_encode("b", ranks)
    assert tok.encode("x", add_prefix=True) == [n + 2, n + 4] + tiktoken_encode("x", ranks)


def test_decode_as_official(small):
    tok, ranks = small
    n = len(ranks)
    ni, hao = "你".encode(), "好".encode()
    ids = [n + 2, n + 4, n + 7] + [ni[0], ni[1], ni[2]] + [n + 8] + [hao[0], hao[1]]
    # Byte runs decode as UTF-8 with replacement; special tokens are their names (all 14 are special).
    assert tok.decode(ids) == "[gMASK]<sop><|user|>你<|assistant|>\ufffd"
    assert tok.decode(ids, skip_special_tokens=True) == "你\ufffd"
    with pytest.raises(TokenizerError, match=f"token id {n + 20} is outside the vocabulary"):
        tok.decode([1, n + 20])
    assert tok.decode([ranks[b"a"], n + 20], skip_unknown=True) == "a"
    assert tok.batch_decode([[ranks[b"a"]], [n]]) == ["a", "<|endoftext|>"]


def test_pad_left_as_official_and_pickles(small):
    import pickle

    tok, _ = small
    tok.hf  # built lazily; a tokenizer that built it must still pickle (data workers, deep copies)
    again = pickle.loads(pickle.dumps(tok))
    assert again.encode(SAMPLE) == tok.encode(SAMPLE) and again.hf.encode("a") == tok.hf.encode("a")
    batch = tok.pad([[5, 6, 7], [8]])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [tok.pad_token_id, tok.pad_token_id, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


def test_not_a_rank_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_text("this is not\n")
    with pytest.raises(TokenizerError, match="not a tiktoken rank file"):
        GLM4Tokenizer(bad)
    write_ranks([b"a", b"b"], bad)
    bad.write_bytes(bad.read_bytes().replace(b" 1\n", b" 5\n"))
    with pytest.raises(TokenizerError, match="ranks are not 0..1"):
        GLM4Tokenizer(bad)


def test_real_tokenizer_matches_tiktoken_algorithm_and_hf(tok):
    ranks = {t: i for i, t in enumerate(tok._tokens)}
    assert len(ranks) == 151329 and tok.special_tokens["<|endoftext|>"] == 151329
    assert tok.special_tokens["<|observation|>"] == 151338 and tok.vocab_size == 151343
    for text in random_strings(150, seed=1):
        ids = tok.encode(text)
        assert ids == tiktoken_encode(text, ranks), repr(text)
        assert tok.decode(ids) == text
        assert tok.hf.encode(text, add_special_tokens=False, split_special_tokens=True) == ids
    assert tok.encode("\n") == [198]
    rng = random.Random(2)
    for _ in range(100):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(0, 12))]
        assert tok.decode(ids) == tok.hf.decode(ids)


# -- fine-tune encodings and prompts -----------------------------------------------------------------------
@pytest.mark.parametrize("case", cases("chat"), ids=ids_of(cases("chat")))
def test_chat_case(tok, case):
    conv = conversation(case["input"])
    cfg = DataConfig(max_input_length=case["max_input_length"], max_output_length=case["max_output_length"],
                     combine=case["combine"])
    sample = encode_sample(conv, tok, cfg)
    assert sample.input_ids == case["input_ids"]
    assert sample.labels == case["labels"]


def test_truncation_is_the_scripts(tok):
    """process_batch cuts ids and labels to max_input_length + max_output_length + 1."""
    case = next(c for c in cases("chat") if c["name"] == "glm4_chat_tools_observation")
    cfg = DataConfig(max_input_length=100, max_output_length=50, combine=False)
    sample = encode_sample(conversation(case["input"]), tok, cfg)
    assert sample.input_ids == case["input_ids"][:151] and sample.labels == case["labels"][:151]
    assert sample.truncated and sample.full_length == len(case["input_ids"])


def test_combine_is_the_default_and_learns_the_last_answer_only(tok):
    case = next(c for c in cases("chat") if c["name"] == "glm4_chat_system_multi_turn")
    ids, labels = FAMILY.encode_chat(conversation(case["input"]), tok)
    assert ids == case["input_ids"]  # the same tokens either way
    last = len(ids) - 1 - ids[::-1].index(tok.role_id("assistant"))
    assert labels == [-100] * (last + 2) + ids[last + 2:]
    assert labels != case["labels"]  # combine: false (the case) also learns the first answer


@pytest.mark.parametrize("case", cases("prompt"), ids=ids_of(cases("prompt")))
def test_prompt_case(tok, case):
    conv = conversation(case["input"], prompt=True)
    ids = build_prompt(conv, tok)
    assert ids == case["input_ids"]
    assert tok.decode(ids) == case["text"]
    assert build_prompt(case["input"]["messages"], tok) == case["input_ids"]  # GLM-4 message dicts


@pytest.mark.parametrize("case", cases("prompt"), ids=ids_of(cases("prompt")))
@pytest.mark.parametrize("which", ["folder template", "glmtune template"])
def test_hf_apply_chat_template_reproduces_prompt_case(tok, own_template_tok, case, which):
    t = tok if which == "folder template" else own_template_tok
    assert (t.chat_template == CHAT_TEMPLATE) == (which == "glmtune template")
    messages = case["input"]["messages"]
    assert t.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == case["text"]
    out = t.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(out) == case["input_ids"]


def test_glmtune_template_renders_openai_tool_calls_as_build_prompt(own_template_tok):
    tok = own_template_tok
    fn = {"name": "get_weather", "description": "天气", "parameters": {"type": "object", "properties": {}}}
    messages = [{"role": "user", "content": "北京天气?"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}]},
                {"role": "tool", "content": "晴"}]
    got = tok.apply_chat_template(messages, tools=[{"type": "function", "function": fn}], add_generation_prompt=True,
                                  tokenize=True, return_dict=False)
    conv = Conversation([Message("user", "北京天气?"),
                         Message("assistant", tool_call=ToolCall("get_weather", {"city": "北京"})),
                         Message("observation", "晴")], tools=[fn])
    assert list(got) == build_prompt(conv, tok)
    assert tok.decode(got).endswith('<|assistant|>get_weather\n{"city": "北京"}<|observation|>\n晴<|assistant|>')


# -- tool calls ---------------------------------------------------------------------------------------------
def test_tool_call_render_parse_round_trip(tok):
    params = {"city": "北京", "days": 3, "units": ["c", "f"], "detail": {"wind": True}}
    text = render_tool_call("get_weather", params, tok)
    assert text == 'get_weather\n{"city": "北京", "days": 3, "units": ["c", "f"], "detail": {"wind": true}}'
    content, call = parse_reply(text, tok)
    assert call == ToolCall("get_weather", params)
    # As decoded from generation: the prompt's <|assistant|>, the call, the stop token.
    assert parse_reply("<|assistant|>" + text + "<|observation|>", tok)[1] == call
    assert parse_reply("\n今天北京晴。<|user|>", tok) == ("今天北京晴。", None)
    assert parse_reply("Note:\n{not json", tok) == ("Note:\n{not json", None)
    assert parse_reply("list\n[1, 2]", tok)[1] is None
    assert parse_reply('Result:\n{"a": 1}', tok) == ('Result:\n{"a": 1}', None)


def test_tool_call_message_trains_as_glm4_native_call(tok):
    conv = Conversation([Message("user", "北京天气?"),
                         Message("assistant", tool_call=ToolCall("get_weather", {"city": "北京"})),
                         Message("observation", '{"weather": "晴"}'), Message("assistant", "晴。")],
                        tools=[{"name": "get_weather", "parameters": {}}])
    ids, labels = FAMILY.encode_chat(conv, tok, combine=False)
    text = tok.decode(ids)
    assert '<|assistant|>get_weather\n{"city": "北京"}<|observation|>\n{"weather": "晴"}<|assistant|>\n晴。<|user|>' in text
    assert text.startswith("[gMASK]<sop><|system|>\n你是一个名为 ChatGLM 的人工智能助手。")
    learned = tok.decode([t for t in labels if t != -100])
    assert learned == 'get_weather\n{"city": "北京"}<|observation|>\n晴。<|user|>'


def test_official_data_with_metadata_tool_calls_reads_and_renders(tok):
    record = {"messages": [
        {"role": "system", "content": "", "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"role": "user", "content": "call f"},
        {"role": "assistant", "metadata": "f", "content": "{\"x\": 1}"},
        {"role": "observation", "content": "ok"},
        {"role": "assistant", "content": "done", "loss": False}]}
    conv = conversation(record)
    ids, labels = FAMILY.encode_chat(conv, tok, combine=False)
    assert '<|assistant|>f\n{"x": 1}<|observation|>\nok<|assistant|>\ndone<|user|>' in tok.decode(ids)
    # "loss": false does not exist in GLM-4's script: that answer is learned (fixture glm4_chat_loss_key_ignored).
    assert tok.decode([t for t in labels if t != -100]) == 'f\n{"x": 1}<|observation|>\ndone<|user|>'


def test_builtin_tool_types_are_refused_with_the_fix(tok):
    conv = Conversation([Message("system", "", tools=[{"type": "python"}]), Message("user", "hi"),
                         Message("assistant", "x")])
    with pytest.raises(Exception, match="function tools only.*'python'"):
        FAMILY.encode_chat(conv, tok)


# -- family: detection, loading, export -------------------------------------------------------------------
def test_detection():
    assert _detect({"model_type": "chatglm", "padded_vocab_size": 151552}, {}, None)
    assert not _detect({"model_type": "chatglm", "padded_vocab_size": 65024}, {}, None)
    assert _detect({"model_type": "glm", "vocab_size": 151552}, {"tokenizer_class": "PreTrainedTokenizerFast"}, None)
    assert not _detect({"model_type": "glm", "vocab_size": 65024}, {}, None)
    assert not _detect({"model_type": "glm4", "vocab_size": 151552, "_name_or_path": "THUDM/GLM-4-9B-0414"}, {}, None)
    assert _detect({}, {"tokenizer_class": "ChatGLM4Tokenizer"}, None)
    assert not _detect({}, {"_name_or_path": "THUDM/GLM-4-32B-0414"}, None)


def test_glm4_tiny_is_detected_and_loads(tok):
    assert detect_family(GLM4_TINY).name == "glm4"
    assert family_of(tok) is FAMILY and tok.family_name == "glm4"
    assert type(load_tokenizer(GLM4_TINY / "tokenizer.model")).__name__ == "GLM4Tokenizer"


def test_save_pretrained_loads_in_transformers_and_glmtune(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.model").read_bytes() == (GLM4_TINY / "tokenizer.model").read_bytes()
    hf = AutoTokenizer.from_pretrained(tmp_path)
    case = cases("prompt")[-1]
    messages = case["input"]["messages"]
    assert list(hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       return_dict=False)) == case["input_ids"]
    assert hf("你好")["input_ids"] == tok.encode("你好", add_prefix=True)
    again = load_tokenizer(tmp_path)
    assert again.family_name == "glm4" and again.encode(SAMPLE) == tok.encode(SAMPLE)


def test_glm4_tiny_model_reproduces_official_outputs(tok):
    import torch
    from safetensors.torch import load_file

    import glmtune

    ref = load_file(str(GLM4_TINY / "reference.safetensors"))
    rows = [row[mask.bool()].tolist() for row, mask in zip(ref["input_ids"], ref["attention_mask"])]
    batch = tok.pad(rows)
    for key in ("input_ids", "attention_mask", "position_ids"):
        assert torch.equal(batch[key], ref[key]), key
    # The prompts are official chat prompts: glmtune builds the same ids from the decoded text.
    assert tok.encode(tok.decode(rows[1]), allow_special=True) == ref["single_input_ids"][0].tolist()
    model = glmtune.load_model(GLM4_TINY, dtype=torch.float32)  # bf16 weights upcast, as the reference
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
        single = model(input_ids=ref["single_input_ids"], labels=ref["loss_labels"])
    mask = batch["attention_mask"].bool()
    for view, value in (("head", logits[..., :512]), ("tail", logits[..., -512:]), ("logsumexp", logits.logsumexp(-1))):
        assert (value - ref[f"logits_{view}"])[mask].abs().max().item() <= 1e-5, view
    assert torch.equal(logits.argmax(-1)[mask], ref["logits_argmax"][mask])
    assert abs(single.loss.item() - ref["loss"].item()) <= 1e-5
    gen = model.generate(ref["single_input_ids"], max_new_tokens=16, min_new_tokens=16, do_sample=False,
                         eos_token_id=None, pad_token_id=tok.pad_token_id)
    assert gen[0, ref["single_input_ids"].shape[1]:].tolist() == ref["greedy_ids"].tolist()



@pytest.mark.parametrize("case", cases("chat") + cases("prompt"), ids=ids_of(cases("chat") + cases("prompt")))
def test_data_encode_cli_reproduces_case(tok, case, tmp_path):
    from glmtune.cli import main

    data, out = tmp_path / "data.jsonl", tmp_path / "out.jsonl"
    data.write_text(json.dumps(case["input"], ensure_ascii=False) + "\n", encoding="utf-8")
    if case["kind"] == "chat":
        args = ["--max-input-length", str(case["max_input_length"]), "--max-output-length",
                str(case["max_output_length"]), "--combine", "true" if case["combine"] else "false"]
    else:
        args = ["--for-generation"]
    assert main(["data", "encode", str(data), "--model", str(GLM4_TINY), "-o", str(out), *args]) == 0
    got = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert got["input_ids"] == case["input_ids"]
    assert got.get("labels") == case.get("labels")


def test_glm4_official_record_reads_into_a_conversation():
    """GLM-4's data format (OpenAI-shaped messages, tools on the system message, observation role, metadata)
    reads through glmtune's readers without loss."""
    fn = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    record = {"messages": [{"role": "system", "content": "", "tools": [{"type": "function", "function": fn}]},
                           {"role": "user", "content": "北京?"},
                           {"role": "assistant", "metadata": "get_weather", "content": "{\"city\": \"北京\"}"},
                           {"role": "observation", "content": "晴"},
                           {"role": "assistant", "content": "晴。"}]}
    conv = conversation(record)
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "observation", "assistant"]
    assert conv.messages[0].tools == [fn] and conv.messages[0].content == ""
    assert conv.messages[2].metadata == "get_weather" and conv.messages[3].content == "晴"
    prompt = conversation({"messages": [{"role": "system", "content": None, "tools": [{"type": "function",
                                                                                       "function": fn}]},
                                        {"role": "user", "content": "hi"}]}, prompt=True)
    assert prompt.messages[0].tools == [fn]


def test_tokenizer_json_loads_as_the_rank_file(small, tmp_path):
    """A GLM-4 tokenizer.json (the -hf folders, exports) gives the same tokenizer; its rank file is written back."""
    tok, ranks = small
    tok.save_pretrained(tmp_path / "export")
    hf_only = tmp_path / "hf-folder"
    hf_only.mkdir()
    (hf_only / "tokenizer.json").write_bytes((tmp_path / "export" / "tokenizer.json").read_bytes())
    again = load_glm4_tokenizer(hf_only)
    assert again.model_file.name == "tokenizer.json" and again.special_tokens == tok.special_tokens
    for text in random_strings(100, seed=3):
        assert again.encode(text) == tok.encode(text) and again.decode(again.encode(text)) == text
    assert again.encode("<|user|>", allow_special=True) == [tok.role_id("user")]
    again.save_pretrained(tmp_path / "back")
    assert (tmp_path / "back" / "tokenizer.model").read_bytes() == tok.model_file.read_bytes()
    spec = json.loads((hf_only / "tokenizer.json").read_text(encoding="utf-8"))
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "<|user|>"]
    (hf_only / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"special tokens <\|user\|> are not at ids"):
        load_glm4_tokenizer(hf_only)


# -- P-Tuning v2 as GLM-4's demo saves it (PEFT prefix tuning) -------------------------------------------------
def test_peft_prefix_checkpoint_loads_with_official_semantics(tiny_model, tmp_path):
    """A PEFT PREFIX_TUNING checkpoint made by PEFT itself loads: per-layer keys/values equal PEFT's own
    get_prompt, and the model gives the same logits as the same prefix in ChatGLM3's official format."""
    import torch
    from peft import PrefixTuningConfig, get_peft_model
    from safetensors.torch import save_file

    from glmtune.methods.ptuning_io import apply_prefix
    from glmtune.methods.ptuning_peft import apply_peft_prefix, is_peft_prefix
    from glmtune.methods.errors import MethodError

    cfg = tiny_model.config
    groups, d = cfg.num_key_value_heads, cfg.head_dim
    peft_dir = tmp_path / "peft"
    torch.manual_seed(0)
    peft_model = get_peft_model(tiny_model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5,
                                                               num_attention_heads=groups, token_dim=groups * d))
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.normal_()
    peft_model.save_pretrained(str(peft_dir))
    expected = peft_model.get_prompt(batch_size=1)
    base = peft_model.get_base_model()
    assert is_peft_prefix(peft_dir) and not is_peft_prefix(tmp_path)

    wrapped = apply_peft_prefix(base, peft_dir)
    ours = wrapped.get_prompt(1, torch.float32)
    assert len(ours) == len(expected.layers) == cfg.num_hidden_layers  # PEFT hands a DynamicCache to the model
    for (k, v), layer in zip(ours, expected.layers):
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)

    official = tmp_path / "official"
    official.mkdir()
    weight = wrapped.prefix_encoder.embedding.weight.detach().clone()
    save_file({"transformer.prefix_encoder.embedding.weight": weight}, str(official / "prefix_encoder.safetensors"))
    (official / "config.json").write_text(json.dumps({"pre_seq_len": 5, "prefix_projection": False}))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        a = wrapped(input_ids=ids).logits
        b = apply_prefix(wrapped.base_model, official)(input_ids=ids).logits
    assert torch.equal(a, b)

    bad = json.loads((peft_dir / "adapter_config.json").read_text())
    (peft_dir / "adapter_config.json").write_text(json.dumps({**bad, "num_attention_heads": groups * 2}))
    with pytest.raises(MethodError, match="another model shape: num_attention_heads"):
        apply_peft_prefix(wrapped.base_model, peft_dir)
