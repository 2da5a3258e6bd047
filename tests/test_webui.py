"""The web UI's callbacks without a browser: data check/preview, a run started from the form, its progress,
stop + resume, chat streaming, export; the loss plot a run leaves."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from glmtune.errors import UserError

pytest.importorskip("gradio", reason="gradio not installed (pip install 'glmtune[webui]')")

from glmtune.webui import chat, forms, runs, tasks  # noqa: E402


@pytest.fixture()
def workspace(tiny_workspace) -> dict:
    return tiny_workspace


def tiny_form(ws: dict, name: str, steps: int = 6, **changes) -> forms.TrainForm:
    values = dict(model_path=str(ws["model"]), train_file=str(ws["data"]), output_root=str(ws["runs"]),
                  run_name=name, method="full", max_input_length=32, max_output_length=48, batch_size=4,
                  learning_rate=2e-3, lr_scheduler="constant", max_steps=steps, precision="fp32",
                  logging_steps=1, save_steps=2)
    values.update(changes)
    return forms.TrainForm(**values)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_form_resolves_through_the_cli_loader(workspace):
    resolved, text = forms.resolve(tiny_form(workspace, "r1", lora_r=4, method="lora"))
    assert resolved["method"]["name"] == "lora" and resolved["method"]["lora"]["r"] == 4
    assert resolved["training"]["max_steps"] == 6
    assert resolved["output"]["dir"] == str((workspace["runs"] / "r1").resolve())
    assert "learning_rate: 0.002" in text
    # Bad values come back as the CLI's one-line errors, naming the option.
    with pytest.raises(UserError, match="run name"):
        tiny_form(workspace, "a/b").run_dir()
    with pytest.raises(Exception, match="learning_rate"):
        forms.resolve(tiny_form(workspace, "r2", learning_rate=-1.0))


def test_data_check_lists_problems_with_file_and_line(workspace, tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"conversations": [{"role": "bot", "content": "x"}]}) + "\n")
    result = tasks.check_data([str(bad)], str(workspace["model"]), tasks.data_config("auto", 64, 64))
    assert len(result.problems) == 1
    where, what = result.problems[0]
    assert where == f"{bad}:2" and "bot" in what
    assert "1 invalid record" in result.summary
    assert len(result.full_lengths) == 1 and result.full_lengths[0] > 5
    assert tasks.length_histogram(result.full_lengths, 129) is not None


def test_preview_shows_tokens_ids_and_labels(workspace):
    head, rows = tasks.preview_record(str(workspace["data"]), str(workspace["model"]),
                                      tasks.data_config("auto", 64, 96), 0)
    assert "tokens" in head and "self_cognition.json" in head
    assert rows[0][1] == "[gMASK]" and rows[0][3] == -100
    learned = [r for r in rows if r[3] != -100]
    assert learned and all(r[2] == r[3] for r in learned)  # a learned token's label is its own id
    with pytest.raises(UserError, match="out of range"):
        tasks.preview_record(str(workspace["data"]), str(workspace["model"]), tasks.data_config("auto", 64, 96), 9999)


def test_run_from_form_progress_stop_resume_chat_export(workspace, tmp_path):
    form = tiny_form(workspace, "ui-run", steps=400, logging_steps=1, save_steps=400)
    config, _ = forms.resolve(form)
    proc = runs.start_training(form.run_dir(), config)
    run_dir = form.run_dir()
    # Listed from the folder (as after a UI restart), with live progress from its log.
    assert run_dir in runs.list_runs(workspace["runs"])
    progress = wait_for(lambda: (p := runs.read_progress(run_dir)).loss is not None and p, 180, "a logged loss")
    assert progress.status.startswith("running") and progress.max_steps == 400
    assert progress.learning_rate == pytest.approx(2e-3) and progress.tokens_per_second > 0
    assert "loss" in progress.summary()
    with pytest.raises(UserError, match="still running"):
        runs.start_training(run_dir, config)
    # A run the CLI started (no UI process file) is found running through the run's lock.
    (run_dir / runs.PROCESS_FILE).rename(run_dir / "process.json.bak")
    assert runs.running_pid(run_dir) == proc.pid
    (run_dir / "process.json.bak").rename(run_dir / runs.PROCESS_FILE)
    # Stop = SIGINT: a checkpoint is saved and the plot written, though the run did not finish.
    assert "SIGINT" in runs.stop_training(run_dir)
    assert proc.wait(timeout=120) == 130
    from glmtune.train.layout import checkpoints

    [(stopped_at, _)] = checkpoints(run_dir)
    assert stopped_at >= progress.step
    assert (run_dir / "loss.png").stat().st_size > 1000
    assert runs.run_status(run_dir).startswith("stopped at checkpoint")
    assert "resume" in runs.log_tail(run_dir) or "SIGINT" in runs.log_tail(run_dir)
    # Resume with a shorter budget: training.resume=yes continues the checkpoint to the end.
    proc = runs.start_training(run_dir, {}, resume=True, overrides=[
        f"training.max_steps={stopped_at + 2}", "training.resume_allow_changes=true"])
    assert proc.wait(timeout=180) == 0, runs.log_tail(run_dir)
    assert f"resuming from {run_dir / f'checkpoint-{stopped_at}'}" in runs.log_tail(run_dir, 200)
    assert runs.read_progress(run_dir).step == stopped_at + 2
    assert runs.run_status(run_dir) == "finished"
    assert tasks.run_results(run_dir)[0] == "final"
    with pytest.raises(UserError, match="already holds a run"):  # a fresh start never reuses a run's folder
        runs.start_training(run_dir, config)

    # Chat with the result: the reply streams (several growing updates) and lands in the history.
    state = chat.ChatState()
    weights = tasks.run_weights(run_dir)
    assert weights == {"model": str(run_dir / "final"), "adapter": None, "prefix": None}
    assert "loaded" in chat.load(state, weights, device="cpu")
    from glmtune.infer.sampling import SamplingConfig

    updates = list(chat.send(state, "Who are you?", "user", "", "", SamplingConfig(temperature=0.0, max_new_tokens=12)))
    assert len(updates) >= 2
    final = updates[-1]
    assert final[0] == {"role": "user", "content": "Who are you?"} and final[-1]["role"] == "assistant"
    assert final[-1]["content"] == state.session.last_reply.content
    assert len(state.session.history) == 2
    model = state.loaded.model
    chat.load(state, weights, device="cpu", reset=False)  # the eval page shares the model: chat goes on
    assert state.loaded.model is model and len(state.history) == 2
    assert chat.clear(state) == [] and state.session is None

    # Evaluation scores the result, reporting progress per batch.
    from glmtune.infer.evaluate import EvalSettings

    seen = []
    result, rows = tasks.evaluate_file(state.loaded.model, state.loaded.tokenizer, str(workspace["data"]), "auto",
                                       EvalSettings(batch_size=2, max_new_tokens=4, max_samples=3),
                                       progress=lambda done, total: seen.append((done, total)))
    assert set(result.metrics) >= {"rouge-1", "rouge-l", "bleu-4"} and len(rows) == 3
    assert seen == [(2, 3), (3, 3)]
    assert rows[0][0].endswith("self_cognition.json:2") and "Glimmer" in rows[0][1]

    # Export writes a standalone folder and says where.
    summary = tasks.export(weights, str(tmp_path / "exported"), "native", "")
    assert str((tmp_path / "exported").resolve()) in summary
    assert (tmp_path / "exported" / "config.json").is_file()


def test_cli_runs_show_up_and_stop_needs_a_live_process(tmp_path):
    run_dir = tmp_path / "cli-run"
    run_dir.mkdir()
    (run_dir / "trainer_log.jsonl").write_text(
        json.dumps({"step": 5, "loss": 2.5, "learning_rate": 1e-4}) + "\n" + '{"step": 10, "lo')  # line mid-write
    (tmp_path / "notes").mkdir()
    assert runs.list_runs(tmp_path) == [run_dir]
    progress = runs.read_progress(run_dir)
    assert (progress.step, progress.loss) == (5, 2.5)
    assert "no training process" in runs.stop_training(run_dir)
    with pytest.raises(UserError, match="no webui-train.yaml or config.yaml"):
        runs.start_training(run_dir, {}, resume=True)
    # A pid file naming a process that is not a glmtune training (pid reuse) is not "running".
    (run_dir / runs.PROCESS_FILE).write_text(json.dumps({"pid": os.getpid()}))
    assert runs.running_pid(run_dir) is None


def test_loss_plot_has_raw_smoothed_eval_and_lr(tmp_path):
    from glmtune.train.plots import loss_figure, plot_losses, smooth

    records = [{"step": s, "loss": 3.0 - s * 0.1 + (0.2 if s % 2 else 0), "learning_rate": 1e-3 * (1 - s / 20)}
               for s in range(1, 20)] + [{"step": 10, "eval_loss": 2.4}, {"step": 19, "eval_loss": 1.9}]
    fig = loss_figure(records, "my-run")
    ax, ax2 = fig.axes
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["train loss", "train loss (smoothed 0.6)", "eval loss"]
    assert ax2.lines[0].get_label() == "learning rate"
    assert ax.get_title().startswith("my-run (step 19")
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # debiased: no drag towards 0
    (tmp_path / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert plot_losses(tmp_path) == [tmp_path / "loss.png"]
    assert (tmp_path / "loss.png").stat().st_size > 5000


def test_auth_from_option_or_environment(monkeypatch):
    from glmtune.webui.app import AUTH_ENV, parse_auth

    assert parse_auth("ann:secret") == ("ann", "secret")
    monkeypatch.setenv(AUTH_ENV, "bob:pw")
    assert parse_auth(None) == ("bob", "pw")
    monkeypatch.delenv(AUTH_ENV)
    assert parse_auth(None) is None
    with pytest.raises(UserError, match="user:password"):
        parse_auth("nopassword")


def test_exposure_warnings_and_tools():
    from glmtune.webui.app import SHARE_WARNING, exposure_warnings

    assert exposure_warnings("127.0.0.1", False, False) == []
    assert exposure_warnings("127.0.0.1", True, True) == [SHARE_WARNING]
    assert "public" in SHARE_WARNING and "--auth" in SHARE_WARNING
    [lan] = exposure_warnings("0.0.0.0", False, False)
    assert "0.0.0.0" in lan and "--auth" in lan
    openai = '[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]'
    assert chat.parse_tools(openai) == [{"name": "get_weather", "parameters": {}}]
    assert chat.parse_tools("  ") is None
    with pytest.raises(UserError, match="line 2"):
        chat.parse_tools('[\n{oops}]')


def test_help_does_not_import_gradio():
    import subprocess
    import sys

    code = "import sys, glmtune.cli; glmtune.cli.build_parser(); print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_watch_redraws_the_curve_only_when_the_log_grows(tmp_path):
    import gradio as gr

    from glmtune.webui.pages import watch

    log = tmp_path / "trainer_log.jsonl"
    log.write_text(json.dumps({"step": 1, "loss": 3.0, "learning_rate": 1e-3}) + "\n")
    status, figure, _, drawn = watch(str(tmp_path), None)
    assert "step 1" in status and "loss 3.0000" in status and figure is not None
    again = watch(str(tmp_path), drawn)
    assert isinstance(again[1], type(gr.skip())) and again[3] == drawn
    with log.open("a") as f:
        f.write(json.dumps({"step": 2, "loss": 2.0}) + "\n")
    status, figure, _, _ = watch(str(tmp_path), drawn)
    assert "step 2" in status and figure.axes[0].lines[0].get_ydata().tolist() == [3.0, 2.0]
