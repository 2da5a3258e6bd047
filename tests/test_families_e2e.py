"""Every family end to end, as a user runs it: train (LoRA and one other method), export, reload, chat through a pipe.

The folders are each family's own: ChatGLM3's and GLM-4's tiny official-layout fixtures, a ChatGLM2 folder
(ChatGLM2-6B's names beside the shared tokenizer.model) and a GLM-4-0414 folder built in-process
(transformers' Glm4ForCausalLM + tokenizer.json). The family is detected from each folder; nothing is forced.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import need_fixtures

FIXTURES_GLM4 = "glm4-tiny"
RECORDS = [
    {"conversations": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好，我是助手。"}]},
    {"conversations": [{"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "2"}]},
    {"conversations": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"},
                       {"role": "user", "content": "again"}, {"role": "assistant", "content": "hi hi"}]},
    {"conversations": [{"role": "user", "content": "颜色？"}, {"role": "assistant", "content": "蓝色"}]},
]


def _chatglm2_folder(chatglm3_dir: Path, out: Path) -> Path:
    """ChatGLM2-6B's layout: the same weights and tokenizer.model as ChatGLM3, named THUDM/chatglm2-6b."""
    shutil.copytree(chatglm3_dir, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("glmtune_family", None)
    (out / "config.json").write_text(json.dumps({**cfg, "_name_or_path": "THUDM/chatglm2-6b"}))
    tok_cfg = {"name_or_path": "THUDM/chatglm2-6b", "remove_space": False, "do_lower_case": False,
               "tokenizer_class": "ChatGLMTokenizer"}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return out


def _family_folder(name: str, request, tmp_path_factory) -> Path:
    if name == "chatglm3":
        return request.getfixturevalue("chatglm3_dir")
    if name == "chatglm2":
        return _chatglm2_folder(request.getfixturevalue("chatglm3_dir"), tmp_path_factory.mktemp("c2") / "model")
    if name == "glm4":
        return need_fixtures() / FIXTURES_GLM4
    from test_family_glm4_0414 import build_glm4_0414_folder

    return build_glm4_0414_folder(tmp_path_factory.mktemp("g4") / "model")


def _train(folder: Path, work: Path, method: str) -> Path:
    from glmtune.cli import main

    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8")
    out = work / f"run-{method}"
    cfg = {"model": {"path": str(folder), "device": "cpu"},
           "data": {"train_file": str(data), "max_input_length": 64, "max_output_length": 64, "cache": False},
           "method": {"name": method},
           "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-2, "logging_steps": 1, "save_steps": 0,
                        "seed": 0, "tensorboard": False},
           "evaluation": {"strategy": "no"}, "output": {"dir": str(out), "plots": False}}
    (work / f"{method}.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(work / f"{method}.yaml"), "--quiet"]) == 0
    log = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    return out / "final"


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("family,other", [("chatglm3", "ptuning"), ("chatglm2", "freeze"), ("glm4", "ptuning"),
                                          ("glm4-0414", "freeze")])
def test_family_trains_exports_reloads_and_chats(family, other, request, tmp_path_factory):
    from glmtune import load_model
    from glmtune.cli import main
    from glmtune.data import build_prompt
    from glmtune.families import detect_family, family_of, load_tokenizer

    folder = _family_folder(family, request, tmp_path_factory)
    assert detect_family(folder).name == family
    tok = load_tokenizer(folder)
    assert family_of(tok).name == family
    work = tmp_path_factory.mktemp(f"e2e-{family}")
    prompt = build_prompt([{"role": "user", "content": "你好"}], tok)

    lora = _train(folder, work, "lora")
    tuned = load_model(folder, adapter=lora)
    export = work / "export"
    assert main(["export", "--model", str(folder), "--adapter", str(lora), "--out", str(export), "--dtype",
                 "fp32"]) == 0
    assert detect_family(export).name == family  # the export says its family
    assert family_of(load_tokenizer(export)).name == family
    torch.testing.assert_close(_logits(load_model(export), prompt), _logits(tuned, prompt), atol=1e-5, rtol=1e-5)
    gen = json.loads((export / "generation_config.json").read_text())
    assert gen["eos_token_id"] == list(tok.stop_ids)

    result = _train(folder, work, other)
    if other == "ptuning":
        reloaded = load_model(folder, prefix=result)
    else:
        reloaded = load_model(folder, adapter=result)
    assert not torch.equal(_logits(reloaded, prompt), _logits(load_model(folder), prompt))  # training changed it

    # A user pipes a question into `glmtune chat` on the export: the family's prompt (detected from the export),
    # then one reply line.
    chat = subprocess.run([sys.executable, "-m", "glmtune", "chat", "--model", str(export), "--temperature", "0",
                           "--max-new-tokens", "4", "--show-prompt"], input="你好\n", capture_output=True, text=True,
                          timeout=300)
    assert chat.returncode == 0, chat.stderr
    lines = chat.stdout.splitlines()
    assert lines[0] == "prompt: " + json.dumps(prompt), chat.stdout
    assert len(lines) == 2 and lines[1].startswith(("assistant: ", "tool_call: ")), chat.stdout


GLM4_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_glm4_tool_call_through_a_pipe(tmp_path):
    """A tiny GLM-4 model taught one tool conversation calls the tool in `glmtune chat` and uses its result."""
    from glmtune import load_model, save_model
    from glmtune.data import encode_chat
    from glmtune.data.messages import Conversation, Message, ToolCall
    from glmtune.families import load_tokenizer
    from glmtune.models import write_generation_config

    tok = load_tokenizer(need_fixtures() / FIXTURES_GLM4)
    conv = Conversation([Message("user", "weather in Paris?"),
                         Message("assistant", tool_call=ToolCall("get_weather", {"city": "Paris"})),
                         Message("observation", '{"temp": 21}'), Message("assistant", "21 degrees.")],
                        tools=GLM4_TOOLS)
    # combine=False learns every answer (GLM-4's default, combine=True, learns only the last one).
    ids, labels = encode_chat(conv, tok, combine=False)
    model = load_model("tiny", dtype="fp32", vocab_size=151552, seed=0)
    # The 151552-row embedding stays as initialised, and logits are taken only where the labels (shifted) learn:
    # the same training signal at a fraction of the cost of the full vocabulary at every position.
    model.model.embed_tokens.weight.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    batch, target = torch.tensor([ids]), torch.tensor(labels[1:])
    learned = target != -100
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float sums on every machine, and faster on shared cores
    try:
        for _ in range(400):
            hidden = model.model(input_ids=batch).last_hidden_state[0, :-1][learned]
            loss = torch.nn.functional.cross_entropy(model.lm_head(hidden), target[learned])
            loss.backward()
            opt.step()
            opt.zero_grad()
            if loss.item() < 0.001:
                break
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.002, loss.item()
    folder = tmp_path / "bot"
    save_model(model.eval(), folder, family="glm4")
    tok.save_pretrained(folder)
    write_generation_config(folder, tok)
    (tmp_path / "tools.json").write_text(json.dumps(GLM4_TOOLS))
    chat = subprocess.run([sys.executable, "-m", "glmtune", "chat", "--model", str(folder), "--tools",
                           str(tmp_path / "tools.json"), "--temperature", "0", "--max-new-tokens", "24"],
                          input='weather in Paris?\n{"temp": 21}\n', capture_output=True, text=True, timeout=300)
    assert chat.returncode == 0, chat.stderr
    lines = chat.stdout.splitlines()
    assert lines[0] == 'tool_call: {"name": "get_weather", "parameters": {"city": "Paris"}}', chat.stdout
    assert lines[1] == "assistant: 21 degrees.", chat.stdout
