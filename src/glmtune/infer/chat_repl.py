"""The two faces of ``glmtune chat``: an interactive terminal, and a line protocol for pipes.

Piped mode (standard input is not a terminal) — the exact format:

Input, one line per turn (blank lines are ignored):
  * any text: a user turn;
  * ``clear``: forget the conversation (answered with ``cleared``);
  * ``stop`` or ``exit``: quit (also in place of an observation);
  * the line after a ``tool_call:`` output is the tool's result (an observation turn).

Output on stdout, one event per line (banners and progress go to stderr):
  * ``prompt: [64790, 64792, ...]`` — the prompt ids, JSON (only with ``--show-prompt``);
  * ``assistant: TEXT`` — a reply, TEXT JSON-string-escaped without the quotes
    (``json.loads('"' + TEXT + '"')`` gives it back; non-ASCII is kept);
  * ``tool_call: {"name": ..., "parameters": {...}}`` — a parsed tool call, JSON;
  * ``cleared`` — after ``clear``;
  * ``error: TEXT`` — the turn was refused (longer than the context, not valid
    UTF-8 ...), TEXT escaped as for ``assistant:``; the conversation stays as
    it was and the next line is read as the same kind of turn.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from .chat import ChatError, ChatSession, Reply

QUIT_WORDS = ("stop", "exit")
CLEAR_WORD = "clear"


def escape_line(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


def tool_call_json(reply: Reply) -> str:
    call = reply.tool_call
    return json.dumps({"name": call.name, "parameters": call.parameters}, ensure_ascii=False)


def run_piped(session: ChatSession, stdin: TextIO, stdout: TextIO, *, single_turn: bool = False,
              show_prompt: bool = False) -> int:
    role = "user"
    for line in stdin:
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        if text.strip() in QUIT_WORDS:
            break
        if role == "user" and text.strip() == CLEAR_WORD:
            session.clear()
            print("cleared", file=stdout, flush=True)
            continue
        try:
            stream = session.send(text, role)
        except ChatError as exc:
            print("error: " + escape_line(str(exc)), file=stdout, flush=True)
            continue
        if show_prompt:
            print("prompt: " + json.dumps(session.last_prompt), file=stdout, flush=True)
        reply = stream.text()
        if reply.tool_call is not None:
            print("tool_call: " + tool_call_json(reply), file=stdout, flush=True)
            role = "observation"
            continue
        print("assistant: " + escape_line(reply.content), file=stdout, flush=True)
        role = "user"
        if single_turn:
            session.clear()
    return 0


BANNER = ("glmtune chat — type a message and press Enter. `clear` resets the conversation, "
          "`stop` or `exit` quits, Ctrl-C interrupts a reply.")


def _ask(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        return None


def _stream_reply(session: ChatSession, text: str, role: str) -> Reply | None:
    """Print the reply as it comes; None when interrupted (the unanswered turn is dropped)."""
    stream = session.send(text, role)
    started = False  # the label waits for text: a tool call shows no empty "ChatGLM:" line
    try:
        for delta in stream:
            if not started:
                print("\nChatGLM: ", end="", flush=True)
                started = True
            print(delta, end="", flush=True)
    except KeyboardInterrupt:
        session.history.pop()
        print(" [interrupted]", flush=True)
        return None
    if not started and stream.reply.tool_call is None:
        print("\nChatGLM: ", end="")
    print(flush=True)
    return stream.reply


def run_interactive(session: ChatSession, *, single_turn: bool = False, show_prompt: bool = False) -> int:
    print(BANNER)
    role, label = "user", "\nUser: "
    while True:
        text = _ask(label)
        if text is None:
            print()
            return 0
        if not text.strip():
            continue
        if text.strip() in QUIT_WORDS:
            return 0
        if role == "user" and text.strip() == CLEAR_WORD:
            session.clear()
            print("(conversation cleared)")
            continue
        try:
            reply = _stream_reply(session, text, role)
        except ChatError as exc:  # the turn is refused; the conversation goes on as it was
            print(f"[not sent] {exc}", flush=True)
            continue
        if show_prompt:
            print("[prompt ids] " + json.dumps(session.last_prompt), file=sys.stderr)
        if reply is None:
            role, label = "user", "\nUser: "
            continue
        if reply.tool_call is not None:
            print(f"[tool call] {reply.tool_call.name}({json.dumps(reply.tool_call.parameters, ensure_ascii=False)})")
            role, label = "observation", "Observation (the tool's result): "
            continue
        if reply.finish_reason == "length":
            print("[stopped at --max-new-tokens]")
        role, label = "user", "\nUser: "
        if single_turn:
            session.clear()
