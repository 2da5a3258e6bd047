"""A fast command line (issue 10): help, version and config errors come back without torch, transformers or gradio.

Each case runs ``glmtune.cli.main`` in a fresh interpreter (``sys.modules`` of this test process is full of
torch already) and reports which heavy libraries the call imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from glmtune.cli import COMMAND_MODULES

HEAVY = ("torch", "transformers", "gradio", "peft")
PROBE = """
import contextlib, io, json, sys
from glmtune.cli import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        status = main(sys.argv[1:])
    except SystemExit as exc:
        status = exc.code
heavy = sorted(m for m in %r if m in sys.modules)
print(json.dumps({"status": status, "heavy": heavy, "out": out.getvalue(), "err": err.getvalue()}))
""" % (HEAVY,)


def run_cli(*argv: str, cwd=None) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# Command names as the parser spells them (module init_model is the command init-model, and so on).
COMMANDS = [name.replace("_", "-") for name in COMMAND_MODULES]


@pytest.mark.parametrize("argv", [["--version"], ["--help"], []], ids=["version", "help", "bare"])
def test_top_level_help_and_version_import_no_heavy_library(argv):
    got = run_cli(*argv)
    assert got["heavy"] == []
    assert ("glmtune " if argv == ["--version"] else "usage: glmtune") in got["out"]


@pytest.mark.parametrize("argv", [[c, "--help"] for c in COMMANDS]
                         + [["data", a, "--help"] for a in ("check", "preview", "encode")],
                         ids=lambda argv: " ".join(argv[:-1]))
def test_every_command_help_imports_no_heavy_library(argv):
    got = run_cli(*argv)
    assert got["status"] == 0
    assert got["out"].startswith(f"usage: glmtune {' '.join(argv[:-1])}")
    assert got["heavy"] == []


def test_command_list_matches_the_parser():
    # The parametrised cases above cover every command: none is registered under another name.
    got = run_cli("--help")
    for name in COMMANDS:
        assert f"    {name}" in got["out"], name


def test_missing_config_file_is_reported_without_torch(tmp_path):
    got = run_cli("train", "nonexistent.yaml", cwd=tmp_path)
    assert got["status"] == 2
    assert got["err"].strip() == "glmtune: error: nonexistent.yaml: config file not found"
    assert got["heavy"] == []


def test_unknown_config_key_is_reported_without_torch(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "run.yaml").write_text("model:\n  path: model\ntraining:\n  max_step: 3\n")
    got = run_cli("train", str(tmp_path / "run.yaml"))
    assert got["status"] == 2
    assert "line 4" in got["err"] and "training.max_step" in got["err"] and "did you mean 'max_steps'" in got["err"]
    assert got["heavy"] == []


def test_llamafactory_yaml_with_a_bad_value_is_reported_without_torch(tmp_path):
    # Every key here is one glmtune knows, so no TrainingArguments field needs looking up (an unknown key
    # such as ddp_timeout is still checked against transformers, which costs its import).
    (tmp_path / "model").mkdir()
    (tmp_path / "lf.yaml").write_text(
        "model_name_or_path: model\nstage: sft\ndo_train: true\nfinetuning_type: lora\nlora_rank: 8\n"
        "lora_target: all\ndataset: identity\ntemplate: chatglm3\ncutoff_len: 64\noutput_dir: saves/x\n"
        "logging_steps: 1\nper_device_train_batch_size: 2\nlearning_rate: abc\nmax_steps: 2\n"
        "lr_scheduler_type: cosine\nwarmup_ratio: 0.1\nbf16: false\nreport_to: none\n")
    got = run_cli("train", "lf.yaml", cwd=tmp_path)
    assert got["status"] == 2
    assert got["err"].strip() == "glmtune: error: lf.yaml, line 13: training.learning_rate must be a number, got 'abc'"
    assert got["heavy"] == []
