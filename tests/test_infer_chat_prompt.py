"""``glmtune chat --prompt TEXT``: one reply printed (the official ``inference_hf.py --prompt`` habit)."""

from __future__ import annotations

import json

from glmtune import cli
from test_infer_trained import IDENTITY, TOOLS, trained_chatbot


def _chat(capsys, *args: str) -> tuple[int, list[str], str]:
    folder = trained_chatbot()[0]
    code = cli.main(["chat", "--model", str(folder), "--temperature", "0", "--max-new-tokens", "48", *args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def test_prompt_prints_one_reply(capsys):
    code, out, err = _chat(capsys, "--prompt", "who are you")
    assert code == 0, err
    assert out == [IDENTITY]


def test_prompt_prints_a_tool_call_as_json(capsys, tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    code, out, err = _chat(capsys, "--tools", str(tools), "--prompt", "weather in Paris?", "--show-prompt")
    assert code == 0, err
    assert out[0].startswith("prompt: [") and len(out) == 2
    assert json.loads(out[1]) == {"name": "get_weather", "parameters": {"city": "Paris"}}


def test_prompt_too_long_is_a_one_line_error(capsys):
    code, out, err = _chat(capsys, "--prompt", "ping " * 5000)
    assert code != 0 and out == []
    assert err.startswith("glmtune: error:") and "context" in err and "Traceback" not in err
