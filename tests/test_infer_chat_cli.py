"""``glmtune chat`` driven through a pipe, on the tiny model trained in ``test_infer_trained``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from glmtune import cli
from glmtune.data.chat_format import build_prompt
from glmtune.data.messages import Message
from test_infer_trained import IDENTITY, OBSERVATION, TOOLS, WEATHER, trained_chatbot


@pytest.fixture(scope="module")
def bot():
    return trained_chatbot()


def run_chat(monkeypatch, capsys, lines: list[str], *args: str) -> tuple[int, list[str], str]:
    folder = trained_chatbot()[0]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code = cli.main(["chat", "--model", str(folder), "--temperature", "0", "--max-new-tokens", "48", *args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def parse_events(lines: list[str]) -> list[tuple[str, object]]:
    """The documented piped format, read back."""
    events = []
    for line in lines:
        tag, _, rest = line.partition(":")
        rest = rest[1:] if rest.startswith(" ") else rest
        if line == "cleared":
            events.append(("cleared", None))
        elif tag == "assistant":
            events.append(("assistant", json.loads('"' + rest + '"')))
        elif tag in ("prompt", "tool_call"):
            events.append((tag, json.loads(rest)))
        else:
            raise AssertionError(f"unexpected output line {line!r}")
    return events


def test_piped_multi_turn_clear_and_stop(bot, monkeypatch, capsys):
    _, _, tok = bot
    code, out, err = run_chat(monkeypatch, capsys, ["who are you", "ping", "clear", "ping", "exit", "who are you"],
                              "--show-prompt")
    assert code == 0, err
    events = parse_events(out)
    kinds = [k for k, _ in events]
    # "exit" quits: the last line is never answered.
    assert kinds == ["prompt", "assistant", "prompt", "assistant", "cleared", "prompt", "assistant"]
    prompts = [v for k, v in events if k == "prompt"]
    replies = [v for k, v in events if k == "assistant"]
    assert replies[0] == IDENTITY and replies[2] == "pong"
    # The second prompt carries the first exchange; after `clear` the prompt is fresh.
    assert prompts[1] == build_prompt([Message("user", "who are you"), Message("assistant", IDENTITY),
                                       Message("user", "ping")], tok)
    assert prompts[2] == build_prompt([Message("user", "ping")], tok)


def test_piped_tool_call_then_observation(bot, monkeypatch, capsys, tmp_path):
    tools = tmp_path / "tools.json"
    # OpenAI's function format is accepted and converted to ChatGLM3's.
    tools.write_text(json.dumps([{"type": "function", "function": t} for t in TOOLS]))
    code, out, err = run_chat(monkeypatch, capsys, ["weather in Paris?", OBSERVATION], "--tools", str(tools))
    assert code == 0, err
    events = parse_events(out)
    assert events == [("tool_call", {"name": "get_weather", "parameters": {"city": "Paris"}}),
                      ("assistant", WEATHER)]


def test_single_turn_forgets(bot, monkeypatch, capsys):
    _, _, tok = bot
    code, out, _ = run_chat(monkeypatch, capsys, ["who are you", "ping"], "--single-turn", "--show-prompt")
    prompts = [v for k, v in parse_events(out) if k == "prompt"]
    assert code == 0 and prompts[1] == build_prompt([Message("user", "ping")], tok)


def test_real_pipe_subprocess(bot):
    folder = bot[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "glmtune", "chat", "--model", str(folder), "--temperature", "0"],
                          input="who are you\nclear\nping\n", capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"assistant: {IDENTITY}", "cleared", "assistant: pong"]


def test_bad_tools_file_is_one_clear_error(bot, monkeypatch, capsys, tmp_path):
    bad = tmp_path / "tools.json"
    bad.write_text('[{"name": "x"},\n {"oops"}]')
    code, out, err = run_chat(monkeypatch, capsys, ["hi"], "--tools", str(bad))
    assert code == 2 and out == []
    assert err.startswith("glmtune: error: ") and f"{bad}:2: invalid JSON" in err and "Traceback" not in err
    code, _, err = run_chat(monkeypatch, capsys, ["hi"], "--tools", str(tmp_path / "missing.json"))
    assert code == 2 and "tools file not found" in err


def test_missing_adapter_is_one_clear_error(bot, monkeypatch, capsys, tmp_path):
    code, out, err = run_chat(monkeypatch, capsys, ["hi"], "--adapter", str(tmp_path / "nowhere"))
    assert code == 2 and out == []
    assert err.startswith("glmtune: error: ") and "nowhere" in err and "Traceback" not in err


def test_interactive_terminal_session(bot, monkeypatch, capsys):
    """The TTY path: streamed replies, a tool call asking for the observation, clear, exit."""
    import builtins

    from glmtune.infer.chat import ChatSession
    from glmtune.infer.chat_repl import run_interactive
    from glmtune.infer.sampling import SamplingConfig

    _, model, tok = bot
    # `exit` also quits where an observation is asked for.
    lines = iter(["weather in Paris?", OBSERVATION, "clear", "weather in Paris?", "exit", "never read"])
    asked = []

    def fake_input(prompt=""):
        asked.append(prompt)
        return next(lines)

    monkeypatch.setattr(builtins, "input", fake_input)
    session = ChatSession(model, tok, tools=TOOLS, sampling=SamplingConfig(temperature=0, max_new_tokens=48))
    assert run_interactive(session) == 0
    out = capsys.readouterr().out
    assert out.count('[tool call] get_weather({"city": "Paris"})') == 2 and "ChatGLM: \n" not in out
    assert f"ChatGLM: {WEATHER}\n" in out and "(conversation cleared)" in out
    assert asked[1].startswith("Observation") and asked[4].startswith("Observation") and len(asked) == 5


def _trained_result(folder, method: str, options: dict, out):
    """A saved ``method`` result on the trained bot whose outputs differ from the bot's."""
    import torch

    from glmtune import load_model
    from glmtune.methods import prepare

    prepared = prepare(load_model(folder, dtype="fp32"), method, options)
    with torch.no_grad():
        for _, param in prepared.trainable_parameters():
            param.add_(0.05)
    prepared.save(out)
    prepared.model.eval()
    return prepared.model


@pytest.mark.parametrize("method, options", [("freeze", {"trainable_layers": 1}), ("lora", {"r": 2})])
def test_chat_and_load_model_with_a_training_result(bot, monkeypatch, capsys, tmp_path, method, options):
    """``--adapter out/final`` takes any glmtune result, not only a LoRA adapter folder."""
    import torch

    from glmtune import load_model

    folder = bot[0]
    trained = _trained_result(folder, method, options, tmp_path / "final")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        base = load_model(folder, dtype="fp32")(input_ids=ids).logits
        loaded = load_model(folder, dtype="fp32", adapter=tmp_path / "final")(input_ids=ids).logits
    assert (expected - base).abs().max() > 1e-3
    torch.testing.assert_close(loaded, expected)
    code, out, err = run_chat(monkeypatch, capsys, ["who are you"], "--adapter", str(tmp_path / "final"))
    assert code == 0 and "Traceback" not in err and "not found" not in err
    assert any(line.startswith("assistant:") for line in out)


def test_device_rule_and_unavailable_gpu_is_one_line_error(bot, monkeypatch, capsys):
    import torch

    from glmtune.devices import DeviceError, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda:1")
    code, out, err = run_chat(monkeypatch, capsys, ["hi"], "--device", "cuda")
    assert code == 2 and out == [] and err.count("\n") == 1 and "no CUDA GPU" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == "cuda:3"
