"""ChatGLM2-6B family: tokenizer specials, the [Round N] prompt, official P-Tuning encodings, detection, rope.

References: ``fixtures/chatglm2-encodings.jsonl`` (THUDM chatglm2-6b's tokenizer and ptuning/main.py).
The official train ids are RIGHT-padded with 0 to max_source + max_target + 1 (labels -100 there);
glmtune's collator pads at batch time, so each case is compared after stripping that padding: our
ids must be the reference's first len(ours) ids, and everything after them must be padding.
Tests that need no fixture build a SentencePiece tokenizer in-process (``trained_tokenizer_dir``).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import FIXTURES, TINY, need_fixtures
from glmtune.cli import main
from glmtune.data import build_prompt, parse_reply
from glmtune.data.config import DataConfig
from glmtune.data.convert import convert_record, detect_format
from glmtune.data.encode import encode_sample
from glmtune.data.errors import DataError
from glmtune.data.messages import Conversation, Message
from glmtune.families import FamilyError, detect_family, family_of, get_family, load_tokenizer
from glmtune.families.chatglm2 import ChatGLM2Tokenizer

CASES_FILE = FIXTURES / "chatglm2-encodings.jsonl"
CASES = [json.loads(x) for x in CASES_FILE.read_text(encoding="utf-8").splitlines()] if CASES_FILE.is_file() else []

# THUDM/chatglm2-6b's config.json and tokenizer_config.json as published (the model's real files).
CHATGLM2_CONFIG = {
    "_name_or_path": "THUDM/chatglm2-6b", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
    "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                 "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                 "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
                 "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
                 "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification"},
    "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0, "attention_softmax_in_fp32": True,
    "bias_dropout_fusion": True, "ffn_hidden_size": 13696, "fp32_residual_connection": False, "hidden_dropout": 0.0,
    "hidden_size": 4096, "kv_channels": 128, "layernorm_epsilon": 1e-05, "multi_query_attention": True,
    "multi_query_group_num": 2, "num_attention_heads": 32, "num_layers": 28, "original_rope": True,
    "padded_vocab_size": 65024, "post_layer_norm": True, "rmsnorm": True, "seq_length": 32768, "use_cache": True,
    "torch_dtype": "float16", "transformers_version": "4.27.1", "tie_word_embeddings": False, "eos_token_id": 2,
    "pad_token_id": 0,
}
CHATGLM2_TOKENIZER_CONFIG = {
    "name_or_path": "THUDM/chatglm2-6b", "remove_space": False, "do_lower_case": False,
    "tokenizer_class": "ChatGLMTokenizer",
    "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
}


def _folder(path, tokenizer_model, config=CHATGLM2_CONFIG, tok_config=CHATGLM2_TOKENIZER_CONFIG):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2), encoding="utf-8")
    shutil.copyfile(tokenizer_model, path / "tokenizer.model")
    return path


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    """A ChatGLM2-6B folder: its real config.json and tokenizer_config.json beside the shared tokenizer.model."""
    need_fixtures()
    return _folder(tmp_path_factory.mktemp("chatglm2-6b"), TINY / "tokenizer.model")


@pytest.fixture(scope="module")
def tok2(trained_tokenizer_dir):
    return ChatGLM2Tokenizer(trained_tokenizer_dir / "tokenizer.model")


def _messages(inp: dict) -> list[Message]:
    pairs = [Message(r, c) for q, a in inp.get("history") or [] for r, c in (("user", q), ("assistant", a))]
    return pairs + [Message("user", inp["prompt"])]


def _unpadded(case: dict, ids: list[int], labels: list[int] | None = None) -> None:
    n = len(ids)
    assert ids == case["input_ids"][:n] and set(case["input_ids"][n:]) <= {0}
    if labels is not None:
        assert labels == case["labels"][:n] and set(case["labels"][n:]) <= {-100}


# -- every case, by the library ---------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case_by_the_library(case, official_dir):
    tok = load_tokenizer(official_dir)
    assert family_of(tok).name == "chatglm2"
    if case["kind"] == "prompt":
        assert build_prompt(_messages(case["input"]), tok) == case["input_ids"]
        return
    fam = family_of(tok)
    conv = Conversation(_messages(case["input"]) + [Message("assistant", case["input"]["response"])])
    lengths = {"max_source": case["max_source_length"], "max_target": case["max_target_length"]}
    _unpadded(case, *fam.encode_chat(conv, tok, **lengths))
    # The record as read from a data file (prompt/response[/history]) through the length policy.
    record = convert_record(case["input"], detect_format(case["input"], "f", 1), "f", 1)
    cfg = DataConfig(max_input_length=case["max_source_length"], max_output_length=case["max_target_length"])
    sample = encode_sample(record, tok, cfg)
    _unpadded(case, sample.input_ids, sample.labels)
    assert len(case["input_ids"]) == case["max_source_length"] + case["max_target_length"] + 1


@pytest.mark.parametrize("case", [c for c in CASES if c["kind"] == "prompt"], ids=lambda c: c["name"])
def test_exported_chat_template_gives_the_prompt(case, official_dir):
    tok = load_tokenizer(official_dir)
    messages = [{"role": m.role, "content": m.content} for m in _messages(case["input"])]
    ids = tok.hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert list(ids) == case["input_ids"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case_by_data_encode(case, official_dir, tmp_path):
    path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    path.write_text(json.dumps(case["input"], ensure_ascii=False) + "\n", encoding="utf-8")
    args = ["data", "encode", str(path), "--model", str(official_dir), "-o", str(out)]
    if case["kind"] == "prompt":
        args.append("--for-generation")
    else:
        args += ["--max-input-length", str(case["max_source_length"]),
                 "--max-output-length", str(case["max_target_length"])]
    assert main(args) == 0
    row = json.loads(out.read_text())
    if case["kind"] == "prompt":
        assert row["input_ids"] == case["input_ids"]
    else:
        _unpadded(case, row["input_ids"], row["labels"])


# -- tokenizer ----------------------------------------------------------------------------------
def test_official_tokenizer_specials(official_dir):
    tok = load_tokenizer(official_dir)
    assert isinstance(tok, ChatGLM2Tokenizer)
    assert tok.special_tokens == {"[MASK]": 64789, "[gMASK]": 64790, "[sMASK]": 64791, "sop": 64792, "eop": 64793}
    assert tok.vocab_size == 64794 and tok.prefix_ids() == [64790, 64792]
    assert tok.stop_ids == [2] and tok.eos_token_id == 2 and tok.pad_token_id == 0
    # No role tokens: the text "<|user|>" stays text, even where special names are parsed.
    assert tok.encode("<|user|>") == tok.encode("<|user|>", allow_special=True) == [906, 31007, 4865, 31007, 30994]
    # The ChatGLM3 tokenizer of the same file keeps its nine specials.
    assert len(load_tokenizer(TINY).special_tokens) == 9


def test_tokenizer_without_roles(tok2):
    assert list(tok2.special_tokens) == ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]
    assert tok2.vocab_size == tok2.sp_size + 5 and tok2.stop_ids == [tok2.eos_token_id]
    with pytest.raises(Exception, match="unknown special token '<\\|user\\|>'"):
        tok2.role_id("user")
    # Special tokens decode to nothing, as THUDM's ChatGLM2 SPTokenizer.convert_id_to_token.
    assert tok2.decode(tok2.prefix_ids() + tok2.encode("hello")) == tok2.decode(tok2.encode("hello"))


def test_saved_tokenizer_folder_is_chatglm2(tok2, tmp_path):
    tok2.save_pretrained(tmp_path)
    assert detect_family(tmp_path).name == "chatglm2"
    assert load_tokenizer(tmp_path).family_name == "chatglm2"


# -- formats ------------------------------------------------------------------------------------
def test_training_learns_only_the_last_answer(tok2):
    conv = Conversation([Message("user", "q1"), Message("assistant", "a1"), Message("user", "q2"),
                         Message("assistant", "a2")])
    ids, labels = get_family("chatglm2").encode_chat(conv, tok2)
    answer = tok2.encode("a2") + [tok2.eos_token_id]
    prompt = tok2.prefix_ids() + tok2.encode("[Round 1]\n\n问：q1\n\n答：a1\n\n[Round 2]\n\n问：q2\n\n答：")
    assert ids == prompt + answer
    assert labels == [-100] * len(prompt) + answer


def test_prompt_response_record_is_round_one(tok2):
    """AdvertiseGen-style records (content/summary mapped to prompt/response) read as ChatGLM2 round 1."""
    fam = get_family("chatglm2")
    chat = fam.encode_chat(Conversation([Message("user", "c"), Message("assistant", "s")]), tok2)
    base = fam.encode_base("c", "s", tok2)
    assert chat == base
    assert base[0][:len(tok2.prefix_ids()) + 1] == tok2.prefix_ids() + tok2.encode("[Round 1]\n\n问：c\n\n答：")[:1]


@pytest.mark.parametrize("messages, cause", [
    ([Message("system", "be brief"), Message("user", "q"), Message("assistant", "a")], "no system prompt"),
    ([Message("user", "q"), Message("user", "q2"), Message("assistant", "a")], "alternation"),
    ([Message("user", "q"), Message("assistant", "a"), Message("observation", "o"), Message("assistant", "b")],
     "no tools"),
])
def test_what_chatglm2_cannot_express_names_the_record(tok2, messages, cause):
    conv = Conversation(messages, source="data.jsonl", line=7)
    with pytest.raises(DataError, match=f"data.jsonl:7: \\[chatglm2\\] .*{cause}"):
        get_family("chatglm2").encode_chat(conv, tok2)


def test_tools_are_refused_and_empty_system_skipped(tok2):
    fam = get_family("chatglm2")
    with pytest.raises(DataError, match="data.jsonl:3: .*no tools"):
        fam.encode_chat(Conversation([Message("user", "q"), Message("assistant", "a")], tools=[{"name": "f"}],
                                     source="data.jsonl", line=3), tok2)
    with pytest.raises(DataError, match="no system prompt"):
        build_prompt([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], tok2)
    assert build_prompt([{"role": "system", "content": ""}, {"role": "user", "content": "q"}], tok2) == \
        build_prompt([{"role": "user", "content": "q"}], tok2)
    with pytest.raises(FamilyError, match="no tool calls"):
        fam.render_tool_call("get_weather", {"city": "x"})


def test_parse_reply_is_process_response(tok2):
    assert parse_reply("  我在[[训练时间]]训练。 \n", tok2) == ("我在2023年训练。", None)
    # A ChatGLM3-style call is just text to ChatGLM2.
    assert parse_reply("f\n```python\ntool_call(a=1)\n```", tok2)[1] is None


def test_history_records_read_as_conversations(tok2, chatglm3_dir):
    """prompt/response/history records keep their history (before: read as context/target, history dropped)."""
    rec = {"prompt": "q2", "response": "a2", "history": [["q1", "a1"]]}
    conv = convert_record(rec, detect_format(rec, "f", 1), "f", 1)
    assert [(m.role, m.content) for m in conv.messages] == [("user", "q1"), ("assistant", "a1"), ("user", "q2"),
                                                           ("assistant", "a2")]
    tok3 = load_tokenizer(chatglm3_dir)
    first_turn = tok3.prefix_ids() + [tok3.role_id("user")] + tok3.encode("\n") + tok3.encode("q1")
    assert encode_sample(conv, tok3, DataConfig()).input_ids[:len(first_turn)] == first_turn
    # A generation input has no response.
    prompt = convert_record({"prompt": "q"}, detect_format({"prompt": "q"}, "f", 1), "f", 1, prompt=True)
    assert build_prompt(prompt, tok2) == tok2.prefix_ids() + tok2.encode("[Round 1]\n\n问：q\n\n答：")
    with pytest.raises(DataError, match="missing required field 'response'"):
        convert_record({"prompt": "q"}, "base", "f", 1)


# -- detection ----------------------------------------------------------------------------------
def test_detection_of_the_real_files(official_dir):
    assert detect_family(official_dir).name == "chatglm2"
    assert detect_family(TINY).name == "chatglm3"


def test_detection_by_name_or_refusal(tmp_path, trained_tokenizer_dir):
    model = trained_tokenizer_dir / "tokenizer.model"
    named_32k = {**CHATGLM2_CONFIG, "_name_or_path": "THUDM/chatglm2-6b-32k", "rope_ratio": 16}
    assert detect_family(_folder(tmp_path / "32k", model, named_32k)).name == "chatglm2"
    anonymous = {k: v for k, v in CHATGLM2_CONFIG.items() if k != "_name_or_path"}
    folder = _folder(tmp_path / "anon", model, anonymous, {"tokenizer_class": "ChatGLMTokenizer"})
    with pytest.raises(FamilyError, match="set model.family"):
        detect_family(folder)
    assert detect_family(folder, "chatglm2").name == "chatglm2"


# -- rope: ChatGLM2-32k divides positions by rope_ratio ------------------------------------------
def _official_chatglm2_cache(seq_len: int, rot_dim: int, rope_ratio: float) -> torch.Tensor:
    """ChatGLM2-6B-32k's RotaryEmbedding.forward_impl (fp32): base 10000, positions / rope_ratio."""
    theta = 1.0 / (10000 ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim))
    seq_idx = torch.arange(seq_len, dtype=torch.float32) / rope_ratio
    idx_theta = torch.outer(seq_idx, theta).float()
    return torch.stack([torch.cos(idx_theta), torch.sin(idx_theta)], dim=-1)


def test_linear_rope_is_positions_over_ratio():
    from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

    from glmtune.models.convert import chatglm_to_glm_config, glm_to_chatglm_config

    cfg = {**CHATGLM2_CONFIG, "num_layers": 1, "hidden_size": 64, "num_attention_heads": 4, "kv_channels": 16,
           "ffn_hidden_size": 64, "padded_vocab_size": 128, "rope_ratio": 16}
    config = chatglm_to_glm_config(cfg, linear_rope=True)
    assert config.rope_parameters["rope_type"] == "linear" and config.rope_parameters["factor"] == 16.0
    assert config.rope_parameters["rope_theta"] == 10000.0
    positions = torch.arange(300)[None]
    cos, sin = GlmRotaryEmbedding(config)(torch.zeros(1, 300, 16), positions)
    ref = _official_chatglm2_cache(300, 8, 16.0)
    # GLM repeats each frequency for its interleaved pair; the first half holds one of each.
    assert torch.allclose(cos[0, :, :4], ref[..., 0], atol=1e-6)
    assert torch.allclose(sin[0, :, :4], ref[..., 1], atol=1e-6)
    assert glm_to_chatglm_config(config)["rope_ratio"] == 16.0
    # ChatGLM3/GLM-4 read the same key as a base multiplier: a different table.
    base_cos, _ = GlmRotaryEmbedding(chatglm_to_glm_config(cfg))(torch.zeros(1, 300, 16), positions)
    assert not torch.allclose(base_cos[0, :, :4], ref[..., 0], atol=1e-3)
    assert chatglm_to_glm_config({**cfg, "rope_ratio": 1}, linear_rope=True).rope_parameters["rope_type"] == "default"
    assert get_family("chatglm2").rope == "linear"


# -- end to end: train, export, reload, chat ------------------------------------------------------
@pytest.fixture(scope="module")
def chatglm2_dir(chatglm3_dir, tmp_path_factory):
    """A tiny ChatGLM2 folder: the tiny ChatGLM3 checkpoint's weights (same architecture) under ChatGLM2's config files."""
    out = tmp_path_factory.mktemp("chatglm2-tiny")
    for f in chatglm3_dir.iterdir():
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    config = json.loads((out / "config.json").read_text())
    config = {k: v for k, v in config.items() if k != "glmtune_family"}
    (out / "config.json").write_text(json.dumps({**config, "_name_or_path": "THUDM/chatglm2-6b"}))
    (out / "tokenizer_config.json").write_text(json.dumps(CHATGLM2_TOKENIZER_CONFIG))
    return out


@pytest.mark.parametrize("config", ["lora.yaml", "ptuning.yaml"])
def test_trains_exports_reloads_and_chats(chatglm2_dir, tmp_path, config, capsys):
    from transformers import AutoModelForCausalLM

    import glmtune
    from conftest import ROOT

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": "你好", "response": "你好，我是助手。", "history": [["hi", "hello"]]},
                                       ensure_ascii=False) + "\n" for _ in range(4)), encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "--quiet", str(ROOT / "examples" / config), f"model.path={chatglm2_dir}",
                 f"data.train_file={data}", "data.val_file=", "data.test_file=", "training.max_steps=2",
                 "training.batch_size=2", "training.gradient_checkpointing=false", "evaluation.strategy=no",
                 f"output.dir={run}", "training.save_steps=2"]) == 0
    tok = load_tokenizer(chatglm2_dir)
    ids = build_prompt([{"role": "user", "content": "你好"}], tok)
    kind = "--prefix" if config == "ptuning.yaml" else "--adapter"
    assert main(["chat", "--model", str(chatglm2_dir), kind, str(run / "final"), "--prompt", "你好",
                 "--max-new-tokens", "3", "--show-prompt"]) == 0
    assert str(ids) in capsys.readouterr().out
    if config == "ptuning.yaml":
        return  # a prefix is not merged into weights (export --layout chatglm3 writes it as the official demo)
    exported = tmp_path / "export"
    assert main(["export", "--model", str(chatglm2_dir), "--adapter", str(run / "final"), "--out", str(exported),
                 "--dtype", "fp32"]) == 0
    assert detect_family(exported).name == "chatglm2"
    assert json.loads((exported / "generation_config.json").read_text())["eos_token_id"] == [2]
    again = load_tokenizer(exported)
    assert again.family_name == "chatglm2" and build_prompt([{"role": "user", "content": "你好"}], again) == ids
    tuned = glmtune.load_model(chatglm2_dir, adapter=run / "final", dtype="fp32")
    reloaded = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.allclose(tuned(x).logits, reloaded(x).logits, atol=1e-5)


def test_chatglm2_32k_folder_loads_with_linear_rope(chatglm2_dir, tmp_path):
    """A ChatGLM2-6B-32k folder (rope_ratio 16) divides positions; the same config named ChatGLM3 scales the base."""
    from glmtune.models import load_model

    for name, expected in (("THUDM/chatglm2-6b-32k", {"rope_type": "linear", "factor": 16.0, "rope_theta": 10000.0}),
                           ("THUDM/chatglm3-6b-32k", {"rope_type": "default", "rope_theta": 160000.0})):
        folder = tmp_path / name.split("/")[1]
        shutil.copytree(chatglm2_dir, folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "_name_or_path": name, "rope_ratio": 16}))
        (folder / "tokenizer_config.json").write_text(json.dumps({**CHATGLM2_TOKENIZER_CONFIG, "name_or_path": name}))
        params = load_model(folder, dtype="fp32").config.rope_parameters
        assert {k: params[k] for k in expected} == expected
