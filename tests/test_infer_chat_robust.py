"""Chat under bad input: a turn too long for the context, undecodable bytes, replies without the metadata newline."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from glmtune import cli
from glmtune.data.chat_format import build_prompt
from glmtune.data.messages import Message
from glmtune.infer.chat import ChatError, ChatSession
from glmtune.infer.sampling import SamplingConfig
from test_infer_trained import IDENTITY, trained_chatbot

LONG = "ping " * 600  # ~1200 tokens: more than the tiny model's 1024 positions


@pytest.fixture(scope="module")
def bot():
    return trained_chatbot()


class ScriptedModel(nn.Module):
    """Produces ``script`` token by token (then ``after`` forever); counts its forward calls."""

    def __init__(self, script: list[int], after: int, vocab: int, max_positions: int = 100_000):
        super().__init__()
        self.script, self.after, self.vocab, self.calls = list(script), after, vocab, 0
        self.config = SimpleNamespace(max_position_embeddings=max_positions)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None):
        step = self.calls
        self.calls += 1
        token = self.script[step] if step < len(self.script) else self.after
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
        logits[:, -1, token] = 1.0
        return SimpleNamespace(logits=logits, cache=None)


def greedy(bot, **kwargs) -> ChatSession:
    _, model, tok = bot
    return ChatSession(model, tok, sampling=SamplingConfig(temperature=0, max_new_tokens=48), **kwargs)


# -- a turn longer than the context --------------------------------------------------------------
def test_too_long_turn_is_refused_and_history_kept(bot):
    session = greedy(bot)
    assert session.chat("who are you").content == IDENTITY
    before = list(session.history)
    with pytest.raises(ChatError, match="context is 1024"):
        session.send(LONG)
    assert session.history == before  # nothing dropped, the refused turn not kept
    session.chat("ping")
    _, _, tok = bot
    assert session.last_prompt == build_prompt([Message("user", "who are you"), Message("assistant", IDENTITY),
                                                Message("user", "ping")], tok)


def _piped(monkeypatch, capsys, folder, text: str) -> list[str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    assert cli.main(["chat", "--model", str(folder), "--temperature", "0", "--max-new-tokens", "48"]) == 0
    return capsys.readouterr().out.splitlines()


def test_piped_too_long_turn_is_an_error_line_then_goes_on(bot, monkeypatch, capsys):
    out = _piped(monkeypatch, capsys, bot[0], f"who are you\n{LONG}\nping\n")
    assert out[0] == f"assistant: {IDENTITY}"
    assert out[1].startswith("error: the prompt is ") and "context is 1024" in out[1]
    # The conversation went on exactly as if the refused line had not been sent.
    assert out[2:] == _piped(monkeypatch, capsys, bot[0], "who are you\nping\n")[1:]


def test_interactive_too_long_turn_is_refused_and_session_goes_on(bot, monkeypatch, capsys):
    import builtins

    from glmtune.infer.chat_repl import run_interactive

    lines = iter(["who are you", LONG, "ping", "exit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    session = greedy(bot)
    assert run_interactive(session) == 0
    out = capsys.readouterr().out
    assert "[not sent] the prompt is" in out and f"ChatGLM: {IDENTITY}" in out
    assert [m.content for m in session.history][:3] == ["who are you", IDENTITY, "ping"]
    assert len(session.history) == 4


# -- undecodable input ---------------------------------------------------------------------------
def test_piped_invalid_utf8_is_an_error_line_then_goes_on(bot):
    folder = bot[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-m", "glmtune", "chat", "--model", str(folder), "--temperature", "0"],
                          input=b"who are you\nbad \xff\xfe bytes\nping\n", capture_output=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode("utf-8").splitlines()
    assert out[0] == f"assistant: {IDENTITY}" and out[2].startswith("assistant: ") and len(out) == 3
    assert out[1].startswith("error: the user message is not valid UTF-8")


# -- replies that do not start with the metadata newline -----------------------------------------
def test_reply_without_leading_newline_is_streamed_whole(bot, monkeypatch, capsys):
    import builtins

    from glmtune.infer.chat_repl import run_interactive

    _, _, tok = bot
    script = tok.encode("pong pong") + [tok.get_command("<|user|>")]
    session = ChatSession(ScriptedModel(script, 0, tok.vocab_size), tok,
                          sampling=SamplingConfig(temperature=0, max_new_tokens=20))
    stream = session.send("ping")
    pieces = list(stream)
    assert "".join(pieces) == stream.reply.content == "pong pong"
    # The terminal shows it too.
    session = ChatSession(ScriptedModel(script, 0, tok.vocab_size), tok,
                          sampling=SamplingConfig(temperature=0, max_new_tokens=20))
    lines = iter(["ping", "exit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    run_interactive(session)
    assert "ChatGLM: pong pong\n" in capsys.readouterr().out


def test_streamed_pieces_add_up_to_the_reply_with_trailing_space(bot):
    _, _, tok = bot
    script = tok.encode("\npong") + tok.encode("  ") + [tok.get_command("<|user|>")]
    session = ChatSession(ScriptedModel(script, 0, tok.vocab_size), tok,
                          sampling=SamplingConfig(temperature=0, max_new_tokens=20))
    stream = session.send("ping")
    assert "".join(stream) == stream.reply.content == "pong"


def test_should_stop_ends_generation(bot):
    _, _, tok = bot
    model = ScriptedModel([], tok.encode("pong")[-1], tok.vocab_size)
    session = ChatSession(model, tok, sampling=SamplingConfig(temperature=0, max_new_tokens=500))
    session.add("user", "ping")
    stream = session.stream(should_stop=lambda: model.calls >= 5)
    stream.text()
    assert model.calls == 5 and len(stream.reply.token_ids) == 4  # no forward after the stop
