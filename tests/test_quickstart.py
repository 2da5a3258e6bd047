"""The README's main command, end to end, in a temporary folder."""

from __future__ import annotations

import json
import subprocess
import sys

import glmtune


def test_quickstart_teaches_identity_and_exports(tmp_path):
    out = tmp_path / "qs"
    # A relative --out, run from another folder, as the README's command does.
    proc = subprocess.run([sys.executable, "-m", "glmtune", "quickstart", "--out", "qs", "--name", "Aurora",
                           "--author", "Example Labs"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    replies = {lines[i][len("user: "):]: lines[i + 1][len("assistant: "):]
               for i in range(len(lines) - 1) if lines[i].startswith("user: ")}
    # The trained identity answers, with the name and author the command was given.
    assert "Aurora" in replies["Who are you?"] and "Example Labs" in replies["Who are you?"]
    assert "Aurora" in replies["你是谁？"]
    assert "Example Labs" in replies["Who made you?"]
    assert "all records are valid" in proc.stdout
    assert (out / "run" / "loss.png").stat().st_size > 1000
    log = [json.loads(x) for x in (out / "run" / "trainer_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    assert losses[-1] < losses[0] / 5
    # The export is a standalone model that reloads and stops on the chat eos ids.
    model = glmtune.load_model(out / "export")
    assert model.config.num_hidden_layers == 2
    assert json.loads((out / "export" / "generation_config.json").read_text())["eos_token_id"][0] == 2
    # A second run replaces its own earlier folder, but never a folder it did not make.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    refused = subprocess.run([sys.executable, "-m", "glmtune", "quickstart", "--out", str(other)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "not made by the quickstart" in refused.stderr
    assert (other / "notes.txt").read_text() == "keep me"
