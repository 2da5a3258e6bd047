"""What ``chat``/``eval`` accept as --model, --tools and --columns, and the errors for what they do not."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from glmtune import cli
from test_infer_chat_cli import _trained_result
from test_infer_trained import IDENTITY, TOOLS, trained_chatbot


@pytest.fixture(scope="module")
def bot():
    return trained_chatbot()


def run(monkeypatch, capsys, argv: list[str], stdin: str = "who are you\n") -> tuple[int, list[str], str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def test_chat_with_a_hub_id_says_glmtune_never_downloads(monkeypatch, capsys):
    code, out, err = run(monkeypatch, capsys, ["chat", "--model", "THUDM/chatglm3-6b"])
    assert code == 2 and out == [] and "Traceback" not in err
    assert "glmtune does not download models" in err and "huggingface-cli download THUDM/chatglm3-6b" in err


def test_chat_model_lora_result_loads_its_base(bot, monkeypatch, capsys, tmp_path):
    folder = bot[0]
    _trained_result(folder, "lora", {"r": 2}, tmp_path / "final")  # load_model records the base path
    assert json.loads((tmp_path / "final" / "adapter_config.json").read_text())["base_model_name_or_path"]
    code, out, err = run(monkeypatch, capsys, ["chat", "--model", str(tmp_path / "final"), "--temperature", "0",
                                               "--max-new-tokens", "24"])
    expected = run(monkeypatch, capsys, ["chat", "--model", str(folder), "--adapter", str(tmp_path / "final"),
                                         "--temperature", "0", "--max-new-tokens", "24"])
    assert code == 0, err
    assert out == expected[1] and out[0].startswith("assistant: ")


@pytest.mark.parametrize("method, options, flag", [("ptuning", {"num_virtual_tokens": 4}, "--prefix"),
                                                   ("freeze", {"trainable_layers": 1}, "--adapter")])
def test_chat_model_result_without_base_says_what_to_pass(bot, monkeypatch, capsys, tmp_path, method, options, flag):
    _trained_result(bot[0], method, options, tmp_path / "final")
    code, out, err = run(monkeypatch, capsys, ["chat", "--model", str(tmp_path / "final")])
    assert code == 2 and out == [] and "Traceback" not in err
    assert "fine-tuning result, not a model" in err and f"{flag} {tmp_path / 'final'}" in err


def test_chat_model_adapter_naming_a_missing_base(bot, monkeypatch, capsys, tmp_path):
    _trained_result(bot[0], "lora", {"r": 2}, tmp_path / "final")
    config_path = tmp_path / "final" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "THUDM/chatglm3-6b"}))
    code, _, err = run(monkeypatch, capsys, ["chat", "--model", str(tmp_path / "final")])
    assert code == 2 and f"--adapter {tmp_path / 'final'}" in err and "'THUDM/chatglm3-6b'" in err


def test_tools_from_a_pipe(bot):
    folder = bot[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    read, write = os.pipe()  # what `--tools <(cat tools.json)` hands over: /dev/fd/N, not a regular file
    os.write(write, json.dumps(TOOLS).encode())
    os.close(write)
    try:
        proc = subprocess.run([sys.executable, "-m", "glmtune", "chat", "--model", str(folder), "--temperature", "0",
                               "--tools", f"/dev/fd/{read}"], input="weather in Paris?\n", capture_output=True,
                              text=True, timeout=120, env=env, pass_fds=(read,))
    finally:
        os.close(read)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ['tool_call: {"name": "get_weather", "parameters": {"city": "Paris"}}']


def test_eval_accepts_the_columns_its_error_suggests(bot, monkeypatch, capsys, tmp_path):
    folder = bot[0]
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"question": "who are you", "answer": IDENTITY}) + "\n")
    argv = ["eval", "--model", str(folder), "--data", str(data), "--max-new-tokens", "24"]
    code, _, err = run(monkeypatch, capsys, argv)
    assert code == 2 and "columns" in err
    code, out, err = run(monkeypatch, capsys, [*argv, "--columns", "question=user,answer=assistant"])
    assert code == 0, err
    assert json.loads(out[-1])["rouge-1"] == pytest.approx(100.0)
