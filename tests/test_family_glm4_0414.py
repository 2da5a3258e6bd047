"""GLM-4-0414 family: a tiny Glm4ForCausalLM folder built in-process (no fixture exists for this family).

The folder has what a real GLM-4-9B-0414 folder has: config.json (model_type glm4, via transformers'
Glm4Config), safetensors weights, generation_config.json with the three stop ids, a byte-level BPE
tokenizer.json (trained here with the ``tokenizers`` library) carrying GLM-4's special tokens, and a
tokenizer_config.json whose chat template is modelled on GLM-4-0414's (tools block, system messages
first, ``<|assistant|>{metadata}`` for calls, ``<|observation|>`` results). The expected values are
what transformers' own ``apply_chat_template`` and ``Glm4ForCausalLM`` give on that folder.
"""

from __future__ import annotations

import json

import pytest
import torch

from glmtune.cli import main
from glmtune.data import build_prompt, encode_chat, parse_reply, render_tool_call
from glmtune.data.messages import Conversation, Message, ToolCall
from glmtune.families import detect_family, family_of, load_tokenizer
from glmtune.families.glm4_0414_tokenizer import GLM40414Tokenizer

SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
            "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
            "<|end_of_video|>"]
TEMPLATE = """[gMASK]<sop>
{%- if tools -%}
<|system|>
# 可用工具
{%- for tool in tools %}
    {%- set function = tool.function if tool.get("function") else tool %}

## {{ function.name }}

{{ function | tojson(indent=4, ensure_ascii=False) }}
在调用上述函数时，请使用 Json 格式表示调用的参数。
{%- endfor %}
{%- endif -%}

{%- for msg in messages %}
    {%- if msg.role == 'system' %}
<|system|>
{{ msg.content }}
    {%- endif %}
{%- endfor %}

{%- for message in messages if message.role != 'system' %}
    {%- set role = message['role'] %}
    {%- set content = message['content'] %}
    {%- set meta = message.get("metadata", "") %}

    {%- if role == 'user' %}
<|user|>
{{ content }}
    {%- elif role == 'assistant' and not meta %}
<|assistant|>
{{ content }}
    {%- elif role == 'assistant' and meta %}
<|assistant|>{{ meta }}
{{ content }}
    {%- elif role == 'observation' %}
<|observation|>
{{ content }}
    {%- endif %}
{%- endfor %}
{% if add_generation_prompt %}<|assistant|>{% endif %}"""
TEXTS = ["今天北京天气怎么样？", "北京今天晴，气温 5 到 15 度。", "What is the weather in Paris?", "It is sunny.",
         '{"city": "北京"}', "get_weather", "你好，我是人工智能助手。", "The quick brown fox jumps over the lazy dog."]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "天气",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def build_glm4_0414_folder(out):
    """A tiny GLM-4-0414 folder as the real ones are laid out (see the module docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Glm4Config, Glm4ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 4, trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(SPECIALS)
    tok.save(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "padding_side": "left", "clean_up_tokenization_spaces": False, "do_lower_case": False,
        "remove_space": False, "model_input_names": ["input_ids", "attention_mask"], "chat_template": TEMPLATE,
    }, ensure_ascii=False, indent=2), encoding="utf-8")
    stops = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    config = Glm4Config(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                        pad_token_id=ids["<|endoftext|>"], eos_token_id=stops, tie_word_embeddings=False)
    torch.manual_seed(0)
    Glm4ForCausalLM(config).save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": stops,
                                                            "pad_token_id": ids["<|endoftext|>"]}))
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_glm4_0414_folder(tmp_path_factory.mktemp("glm4-0414-tiny"))


@pytest.fixture(scope="module")
def tok(folder):
    return load_tokenizer(folder)


def _template_ids(tok, messages, **kwargs) -> list[int]:
    ids = tok.hf.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


CHAT = [{"role": "system", "content": "你是一个天气助手。"}, {"role": "user", "content": "今天北京天气怎么样？"},
        {"role": "assistant", "metadata": "get_weather", "content": '{"city": "北京"}'},
        {"role": "observation", "content": '{"weather": "晴"}'}, {"role": "assistant", "content": "北京今天晴。"}]


def _conversation(tools=None) -> Conversation:
    return Conversation([Message("system", "你是一个天气助手。"), Message("user", "今天北京天气怎么样？"),
                         Message("assistant", tool_call=ToolCall("get_weather", {"city": "北京"})),
                         Message("observation", '{"weather": "晴"}'), Message("assistant", "北京今天晴。")],
                        tools=tools)


# -- tokenizer and detection ------------------------------------------------------------------
def test_folder_is_detected_and_tokenizer_wraps_tokenizer_json(folder, tok):
    assert detect_family(folder).name == "glm4-0414"
    assert isinstance(tok, GLM40414Tokenizer) and family_of(tok).name == "glm4-0414"
    special = tok.special_tokens
    assert list(special) == SPECIALS and tok.prefix_ids() == [special["[gMASK]"], special["<sop>"]]
    assert tok.stop_ids == [special["<|endoftext|>"], special["<|user|>"], special["<|observation|>"]]
    assert tok.eos_token_id == tok.pad_token_id == special["<|endoftext|>"] and tok.vocab_size == len(tok.hf)
    # Special names in text stay text unless asked for, as glmtune's other tokenizers.
    assert special["<|user|>"] not in tok.encode("<|user|>") and tok.decode(tok.encode("<|user|>")) == "<|user|>"
    assert tok.encode("<|user|>", allow_special=True) == [special["<|user|>"]]
    text = "北京今天晴，气温 5 到 15 度。"
    assert tok.decode(tok.encode(text)) == text and tok.encode(text) == tok.hf.encode(text, add_special_tokens=False)
    with pytest.raises(Exception, match="outside the vocabulary"):
        tok.decode([tok.vocab_size + 3])


def test_saved_tokenizer_reloads_as_the_family(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["glmtune_family"] == "glm4-0414"
    again = load_tokenizer(tmp_path)
    assert again.family_name == "glm4-0414" and again.encode("今天北京") == tok.encode("今天北京")
    assert build_prompt(CHAT[:2], again) == build_prompt(CHAT[:2], tok)


def test_folder_without_config_names_the_family(tok, tmp_path):
    from transformers import Glm4Config

    tok.hf.save_pretrained(tmp_path)  # no glmtune mark: the name decides, or nothing does
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "name_or_path": "THUDM/GLM-Z1-9B-0414"}))
    assert detect_family(tmp_path).name == "glm4-0414"
    Glm4Config(vocab_size=10).save_pretrained(tmp_path)
    assert detect_family(tmp_path).name == "glm4-0414"


# -- formats ---------------------------------------------------------------------------------------
def test_prompt_is_the_folders_template(tok):
    expected = _template_ids(tok, CHAT[:4], add_generation_prompt=True)
    messages = [Message(m["role"], m["content"], metadata=m.get("metadata", "")) for m in CHAT[:4]]
    assert build_prompt(messages, tok) == expected
    assert build_prompt(CHAT[:4], tok) == expected
    conv = Conversation(_conversation().messages[:4])
    assert build_prompt(conv, tok) == expected
    with_tools = _template_ids(tok, CHAT[:2], tools=TOOLS, add_generation_prompt=True)
    assert build_prompt(Conversation(_conversation().messages[:2], tools=TOOLS), tok) == with_tools
    assert "## get_weather" in tok.decode(with_tools) and tok.decode(expected).endswith("<|assistant|>")


def test_combine_learns_after_the_last_assistant(tok):
    """finetune.py's combine path: the whole template render, loss after the last <|assistant|>, shifted, + <|user|>."""
    ids, labels = encode_chat(_conversation(), tok)
    rendered = _template_ids(tok, CHAT)
    user = tok.get_command("<|user|>")
    assert ids == rendered + [user]
    last = max(i for i, t in enumerate(ids) if t == tok.get_command("<|assistant|>"))
    assert labels == [-100] * (last + 2) + ids[last + 2:]
    assert tok.decode([t for t in labels if t != -100]).endswith("北京今天晴。<|user|>")


def test_per_message_learns_every_answer(tok):
    """combine: false: [gMASK]<sop> + apply_chat_template([m])[2:] per message, assistant messages learned."""
    ids, labels = encode_chat(_conversation(), tok, combine=False)
    parts = [_template_ids(tok, [m])[2:] for m in CHAT]
    assert ids == tok.prefix_ids() + sum(parts, []) + [tok.get_command("<|user|>")]
    learned = [False, False] + sum(([m["role"] == "assistant"] * len(p) for m, p in zip(CHAT, parts)), [])
    shifted = [False] + learned
    assert labels == [t if keep else -100 for t, keep in zip(ids, shifted)]
    # The call ("get_weather\n{...}" after <|assistant|>) and the answer are both learned.
    assert "get_weather" in tok.decode([t for t in labels if t != -100])
    # Tools render as the template's tools block, first (the official script would drop them: see the module).
    with_tools, tools_labels = encode_chat(_conversation(TOOLS), tok, combine=False)
    block = len(with_tools) - len(ids)
    assert with_tools[:2] + with_tools[2 + block:] == ids and tools_labels[2 + block:] == labels[2:]
    assert tok.decode(with_tools[2:2 + block]).startswith("<|system|>\n# 可用工具\n## get_weather")  # trim_blocks eats a newline


def test_tool_calls_parse_and_render(tok):
    text = render_tool_call("get_weather", {"city": "北京"}, tok)
    assert text == 'get_weather\n{"city": "北京"}'
    assert parse_reply(text, tok) == ('{"city": "北京"}', ToolCall("get_weather", {"city": "北京"}))
    assert parse_reply("\n北京今天晴。", tok) == ("北京今天晴。", None)


def test_data_encode_cli(folder, tmp_path):
    record = {"messages": CHAT}
    path, out = tmp_path / "d.jsonl", tmp_path / "o.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["data", "encode", str(path), "--model", str(folder), "-o", str(out)]) == 0
    tok = load_tokenizer(folder)
    row = json.loads(out.read_text())
    assert row["input_ids"] == _template_ids(tok, CHAT) + [tok.get_command("<|user|>")]
    assert main(["data", "encode", str(path), "--model", str(folder), "--for-generation", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["input_ids"] == _template_ids(tok, CHAT[:4], add_generation_prompt=True)


# -- the model -------------------------------------------------------------------------------------
def test_load_model_is_transformers_glm4(folder, tok):
    from transformers import Glm4ForCausalLM

    from glmtune.models import load_model
    from glmtune.models.loading import find_glm

    ours = load_model(folder, dtype="fp32")
    assert isinstance(ours, Glm4ForCausalLM) and find_glm(ours) is ours
    ref = Glm4ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([build_prompt(CHAT[:2], tok)])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, ref(ids).logits)


def _train(config: str, model, data, out) -> None:
    from conftest import ROOT

    assert main(["train", "--quiet", str(ROOT / "examples" / config), f"model.path={model}", f"data.train_file={data}",
                 "data.val_file=", "data.test_file=", "training.max_steps=2", "training.batch_size=2",
                 "training.gradient_checkpointing=false", "evaluation.strategy=no", f"output.dir={out}",
                 "training.save_steps=2"]) == 0


@pytest.mark.parametrize("config", ["lora.yaml", "freeze.yaml"])
def test_trains_exports_and_reloads(folder, tok, tmp_path, config):
    """LoRA and freeze train on Glm4ForCausalLM; the export reloads in transformers with the same logits."""
    from transformers import Glm4ForCausalLM

    import glmtune

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": CHAT}, ensure_ascii=False) + "\n" for _ in range(4)),
                    encoding="utf-8")
    _train(config, folder, data, tmp_path / "run")
    exported = tmp_path / "export"
    assert main(["export", "--model", str(folder), "--adapter", str(tmp_path / "run" / "final"), "--out",
                 str(exported), "--dtype", "fp32"]) == 0
    assert detect_family(exported).name == "glm4-0414" and load_tokenizer(exported).stop_ids == tok.stop_ids
    ids = torch.tensor([build_prompt(CHAT[:2], tok)])
    tuned = glmtune.load_model(folder, adapter=tmp_path / "run" / "final", dtype="fp32")
    with torch.no_grad():
        reloaded = Glm4ForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()(ids).logits
        assert torch.allclose(tuned(ids).logits, reloaded, atol=1e-5)
        assert not torch.allclose(glmtune.load_model(folder, dtype="fp32")(ids).logits, reloaded, atol=1e-4)


def test_chat_prompt_is_the_template(folder, tok, capsys):
    assert main(["chat", "--model", str(folder), "--prompt", "今天北京天气怎么样？", "--max-new-tokens", "2",
                 "--show-prompt"]) == 0
    expected = _template_ids(tok, CHAT[1:2], add_generation_prompt=True)
    assert f"prompt: {expected}" in capsys.readouterr().out
