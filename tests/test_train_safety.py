"""What a run folder guarantees: overwrite removes only glmtune's files, one writer, honest resumes,
reproducible seeds, readable weights, clear errors, and evaluation that a stop request interrupts.

Same tiny model and tokenizer as test_train_loop (a few seconds per run on two cores).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import TrainerCallback
from test_train_loop import _cfg, _losses, workdir  # noqa: F401  (workdir is a fixture)

from glmtune.config import ConfigError
from glmtune.train import TrainingError, run_training
from glmtune.train.trainer import GlmTrainer

FAST = {"training.max_steps": 2, "training.save_steps": 2}


# -- overwrite ----------------------------------------------------------------------------------------
def test_overwrite_removes_only_what_the_run_wrote(workdir, tmp_path):
    out = tmp_path / "out"
    run_training(_cfg(workdir, out, **FAST), quiet=True)
    assert (out / "checkpoint-2").is_dir() and (out / "final").is_dir()
    (out / "notes.txt").write_text("mine")  # the user's file beside the run's
    run_training(_cfg(workdir, out, **{**FAST, "training.max_steps": 1, "training.save_steps": 1,
                                       "output.if_exists": "overwrite"}), quiet=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]  # the old run's are gone
    assert [s for s, _ in _losses(out)] == [1]


@pytest.mark.parametrize("if_exists", ["refuse", "overwrite", "resume"])
def test_a_non_empty_folder_that_is_no_glmtune_run_is_never_written(workdir, tmp_path, if_exists):
    out = tmp_path / "mine"
    out.mkdir()
    mine = {"config.yaml": "my: config\n", "trainer_log.jsonl": '{"mine": 1}\n', "loss.png": "png",
            "data_report.json": "{}"}
    for name, text in mine.items():
        (out / name).write_text(text)
    with pytest.raises(ConfigError, match=r"not a glmtune run folder.*config\.yaml.*new or empty output\.dir"):
        run_training(_cfg(workdir, out, **{**FAST, "output.if_exists": if_exists}), quiet=True)
    assert {p.name: p.read_text() for p in out.iterdir()} == mine  # no lock file left behind either


def test_a_refused_run_folder_gets_no_lock_file(workdir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="notes.txt"):
        run_training(_cfg(workdir, out, **FAST), quiet=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_overwrite_never_removes_the_config_file_being_run(workdir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    run_training(_cfg(workdir, out, **FAST), quiet=True)
    recorded = (out / "config.yaml").read_bytes()
    monkeypatch.chdir(workdir)
    from glmtune.cli import main

    code = main(["train", str(out / "config.yaml"), "output.if_exists=overwrite", "--quiet"])
    assert code != 0 and f"the config file {out / 'config.yaml'}" in capsys.readouterr().err
    assert (out / "config.yaml").read_bytes() == recorded and (out / "checkpoint-2").is_dir()


def test_overwrite_keeps_user_files_inside_run_folders(workdir, tmp_path):
    out = tmp_path / "run"
    run_training(_cfg(workdir, out, **FAST), quiet=True)
    (out / "final" / "mynote.txt").write_text("mine")
    before = sorted(p.name for p in (out / "final").iterdir())
    with pytest.raises(ConfigError, match=r"final/mynote\.txt.*nothing was deleted"):
        run_training(_cfg(workdir, out, **{**FAST, "output.if_exists": "overwrite"}), quiet=True)
    assert (out / "final" / "mynote.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / "final").iterdir()) == before and (out / "checkpoint-2").is_dir()


def test_a_legacy_run_without_manifest_is_resumable_but_never_overwritten(tmp_path):
    from glmtune.train import layout

    old = tmp_path / "old"
    (old / "checkpoint-2").mkdir(parents=True)
    (old / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (old / "config.yaml").write_text("x: 1\n")
    assert layout.run_artifacts(old) == []
    assert layout.prepare_output(old, "resume", None) == old / "checkpoint-2"
    with pytest.raises(ConfigError, match="older glmtune"):
        layout.prepare_output(old, "overwrite", None)
    assert (old / "config.yaml").is_file() and (old / "checkpoint-2" / "trainer_state.json").is_file()


@pytest.mark.parametrize("where", ["data", "cwd"])
def test_overwrite_refuses_a_folder_holding_the_data_or_the_working_folder(workdir, tmp_path, monkeypatch, where):
    data_before = (workdir / "train.jsonl").read_bytes()
    if where == "data":
        out, named = workdir, "the data file train.jsonl"
    else:
        monkeypatch.chdir(tmp_path)
        (tmp_path / "keep.yaml").write_text("x: 1\n")
        out, named = tmp_path.parent, "contains the working folder"
    with pytest.raises(ConfigError, match=named):
        run_training(_cfg(workdir, out, **{**FAST, "output.if_exists": "overwrite"}), quiet=True)
    assert (workdir / "train.jsonl").read_bytes() == data_before
    assert where == "data" or (tmp_path / "keep.yaml").is_file()


def test_quickstart_replaces_only_its_own_files(tmp_path, monkeypatch):
    from glmtune.errors import UserError
    from glmtune.quickstart import MARKER, prepare_folder

    out = tmp_path / "qs"
    prepare_folder(out)
    (out / "run").mkdir()
    (out / "run" / "loss.png").write_bytes(b"x")
    (out / "mine.txt").write_text("keep")
    prepare_folder(out)
    assert (out / "mine.txt").read_text() == "keep" and not (out / "run").exists() and (out / MARKER).is_file()
    monkeypatch.chdir(out)
    with pytest.raises(UserError, match="working folder"):
        prepare_folder(out)
    assert (out / "mine.txt").is_file()


def test_a_new_run_never_claims_eval_loss_png_it_no_longer_writes(tmp_path):
    """loss.png holds the eval loss now: a user's eval_loss.png in a run folder survives an overwrite,
    and without a manifest nothing at all is glmtune's to remove."""
    from glmtune.config.doc import describe_config
    from glmtune.train import layout

    run = tmp_path / "run"
    run.mkdir()
    layout.claim_run_names(run)
    (run / "eval_loss.png").write_bytes(b"mine")
    layout.remove_run(run)
    assert (run / "eval_loss.png").read_bytes() == b"mine"
    old = tmp_path / "old"
    old.mkdir()
    (old / "eval_loss.png").write_bytes(b"x")
    assert layout.run_artifacts(old) == []
    # The texts that describe a run folder name only what a run writes.
    assert "eval_loss.png" not in layout.__doc__ and "eval_loss.png" not in describe_config()
    assert "loss.png" in describe_config()


# -- reproducibility ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(workdir):
    """A tiny model folder on disk: loading it sets no seed, as with a real checkpoint."""
    from glmtune.models import load_model, save_model
    from glmtune.tokenizer import load_tokenizer

    folder = workdir / "model"
    if not folder.is_dir():
        vocab = load_tokenizer(workdir / "tok").vocab_size
        save_model(load_model("tiny", dtype="fp32", vocab_size=vocab, seed=0), folder)
    return folder


@pytest.mark.parametrize("method,options", [
    ("lora", {}),
    ("ptuning", {"method.ptuning.num_virtual_tokens": 4}),
    ("freeze", {"method.freeze.trainable_layers": 1}),
    ("full", {"training.learning_rate": 1e-3}),
])
def test_same_seed_gives_identical_losses(workdir, model_dir, tmp_path, method, options):
    over = {"model.path": str(model_dir), "training.max_steps": 3, **options}
    run_training(_cfg(workdir, tmp_path / "a", method, **over), quiet=True)
    torch.manual_seed(1234)  # whatever ran before must not matter
    torch.rand(7)
    run_training(_cfg(workdir, tmp_path / "b", method, **over), quiet=True)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


# -- resume ------------------------------------------------------------------------------------------
def test_resume_with_changed_options_is_refused_and_config_kept(workdir, tmp_path):
    out = tmp_path / "out"
    run_training(_cfg(workdir, out, **FAST), quiet=True)
    recorded = (out / "config.yaml").read_bytes()
    changed = {**FAST, "training.max_steps": 4, "training.learning_rate": 2e-2, "training.resume": "yes"}
    with pytest.raises(ConfigError) as err:
        run_training(_cfg(workdir, out, **changed), quiet=True)
    assert "training.learning_rate: 0.01 -> 0.02" in str(err.value) and "training.max_steps: 2 -> 4" in str(err.value)
    assert "resume_allow_changes" in str(err.value)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    result = run_training(_cfg(workdir, out, **changed, **{"training.resume_allow_changes": "true"}), quiet=True)
    assert result.global_step == 4
    assert (out / "config.yaml").read_bytes() == recorded
    assert "learning_rate: 0.02" in (out / "config-resume-2.yaml").read_text()


def test_resume_with_changed_data_is_refused_naming_the_file(workdir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_bytes((workdir / "train.jsonl").read_bytes())
    out = tmp_path / "out"
    over = {**FAST, "training.max_steps": 4, "data.data_dir": str(data)}
    run_training(_cfg(workdir, out, **over), quiet=True)
    shutil.rmtree(out / "checkpoint-4")  # as if stopped after step 2
    assert json.loads((out / "data_files.json").read_text())["train.jsonl"]["size"] > 0
    first = (data / "train.jsonl").read_text().splitlines()[0]
    with (data / "train.jsonl").open("a") as fh:
        fh.write(first + "\n")  # same path, one more record
    resume = {**over, "training.resume": "yes"}
    with pytest.raises(ConfigError, match=r"data changed.*train\.jsonl.*resume_allow_changes"):
        run_training(_cfg(workdir, out, **resume), quiet=True)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    result = run_training(_cfg(workdir, out, **{**resume, "training.resume_allow_changes": "true"}), quiet=True)
    assert result.global_step == 4
    assert (out / "data-resume-2.json").is_file()


def test_resume_of_a_finished_run_does_nothing(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    run_training(_cfg(workdir, out, **FAST), quiet=True)
    log = (out / "trainer_log.jsonl").read_bytes()
    final = {p.name: p.stat().st_mtime_ns for p in (out / "final").iterdir()}
    result = run_training(_cfg(workdir, out, **FAST, **{"training.resume": "yes"}))
    assert result.global_step == 2 and result.final_dir == out / "final"
    assert "is complete" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (out / "trainer_log.jsonl").read_bytes() == log
    assert {p.name: p.stat().st_mtime_ns for p in (out / "final").iterdir()} == final


def test_resume_with_an_incompatible_checkpoint_is_a_clear_error(workdir, tmp_path):
    out = tmp_path / "out"
    run_training(_cfg(workdir, out, **FAST, **{"method.lora.r": 4}), quiet=True)
    with pytest.raises(TrainingError, match=r"cannot resume from .*checkpoint-2.*do not fit this model.*size mismatch"):
        run_training(_cfg(workdir, out, **{**FAST, "method.lora.r": 8, "training.max_steps": 3,
                                           "training.resume": "yes", "training.resume_allow_changes": "true"}),
                     quiet=True)


def test_unsafe_pickle_in_optimizer_state_is_refused_as_a_clear_error(workdir, tmp_path):
    out = tmp_path / "out"
    run_training(_cfg(workdir, out, **FAST), quiet=True)
    torch.save({"state": {}, "param_groups": [], "payload": os.getcwd}, out / "checkpoint-2" / "optimizer.pt")
    with pytest.raises(TrainingError, match=r"optimizer|refused.*could run code"):
        run_training(_cfg(workdir, out, **{**FAST, "training.max_steps": 3, "training.resume": "yes",
                                           "training.resume_allow_changes": "true"}), quiet=True)


# -- locking -----------------------------------------------------------------------------------------
HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from glmtune.train.layout import lock_output
    lock_output(Path(sys.argv[1]))
    print("locked", flush=True)
    time.sleep(60)
""")


def test_a_second_writer_is_refused_and_a_dead_holder_does_not_block(workdir, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"in use by another glmtune process \(pid {holder.pid}\)"):
            run_training(_cfg(workdir, out, **FAST), quiet=True)
        assert not list(out.glob("checkpoint-*"))
    finally:
        holder.kill()  # SIGKILL: the lock file stays, the lock does not
        holder.wait()
    assert (out / ".glmtune.lock").is_file()
    assert run_training(_cfg(workdir, out, **FAST), quiet=True).global_step == 2


# -- permissions and the checkpoint override -------------------------------------------------------------
def test_weights_get_the_umask_permissions(workdir, tmp_path):
    old = os.umask(0o022)
    try:
        result = run_training(_cfg(workdir, tmp_path / "out", **FAST), quiet=True)
    finally:
        os.umask(old)
    for folder in (result.final_dir, tmp_path / "out" / "checkpoint-2"):
        modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir() if p.is_file()}
        assert modes["adapter_model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


class _PushOn(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        args.push_to_hub = True  # after the Trainer's init, so no hub repository is created


def test_checkpoints_are_hf_checkpoints_with_push_to_hub_kept(workdir, tmp_path, monkeypatch):
    pushed = []
    monkeypatch.setattr(GlmTrainer, "_push_from_checkpoint", lambda self, folder: pushed.append(
        sorted(os.listdir(folder))), raising=False)
    out = tmp_path / "out"
    run_training(_cfg(workdir, out, **{"training.max_steps": 2, "training.save_steps": 1}), quiet=True,
                 callbacks=[_PushOn()])
    assert len(pushed) == 2 and "trainer_state.json" in pushed[0] and "optimizer.pt" in pushed[0]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".tmp", "checkpoint"))) == \
        ["checkpoint-1", "checkpoint-2"]


# -- evaluation inside training ----------------------------------------------------------------------------
def _eval_cfg(workdir, out, **over):
    return _cfg(workdir, out, **{"data.val_file": str(workdir / "dev.jsonl"), "evaluation.strategy": "steps",
                                 "evaluation.steps": 2, "evaluation.max_new_tokens": 4,
                                 "evaluation.batch_size": 1, "evaluation.max_samples": 4, **over})


def test_no_generation_eval_at_a_last_step_eval_steps_did_not_reach(workdir, tmp_path):
    out = tmp_path / "out"
    run_training(_eval_cfg(workdir, out, **{"training.max_steps": 3}), quiet=True)
    evals = [json.loads(x)["step"] for x in (out / "trainer_log.jsonl").read_text().splitlines()
             if "eval_loss" in x]
    assert evals == [2]  # transformers >= 4.46 would add step 3; the official run (4.40) does not
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["step-2"]


def test_ctrl_c_twice_during_evaluation_stops_it_and_keeps_the_checkpoint(workdir, tmp_path, monkeypatch):
    import time

    from glmtune.infer import generation

    calls = []
    real = generation.generate_batch

    def slow_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # the second one must not lose the checkpoint
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "generate_batch", slow_batch)
    out = tmp_path / "out"
    # The handler the run must give back: Python's own, or SIG_IGN where the tests were started in the background
    # by a shell without job control (which ignores SIGINT for its background jobs).
    before = signal.getsignal(signal.SIGINT)
    result = run_training(_eval_cfg(workdir, out, **{"training.max_steps": 6}), quiet=True)
    assert result.interrupted == "SIGINT" and result.global_step == 2 and result.final_dir is None
    assert len(calls) == 1  # stopped at the next generated batch, not after all 4 samples
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert signal.getsignal(signal.SIGINT) is before


def test_tokens_per_second_leaves_out_evaluation_time(workdir, tmp_path, monkeypatch):
    import time

    from glmtune.infer import generation

    real = generation.generate_batch

    def slow_batch(*args, **kwargs):
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "generate_batch", slow_batch)
    out = tmp_path / "out"
    run_training(_eval_cfg(workdir, out, **{"training.max_steps": 4}), quiet=True)
    speed = {r["step"]: r["tokens_per_second"] for r in map(json.loads, (out / "trainer_log.jsonl").read_text()
                                                            .splitlines()) if "tokens_per_second" in r}
    # Step 3's interval holds the 2 s evaluation of step 2; a training step takes a few ms.
    assert speed[3] > speed[4] / 3, speed


class _InterruptAtEnd(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_after_the_last_step_still_saves_the_result(workdir, tmp_path):
    result = run_training(_cfg(workdir, tmp_path / "out", **{"training.max_steps": 2}), quiet=True,
                          callbacks=[_InterruptAtEnd()])
    assert result.interrupted == "SIGINT" and result.global_step == 2
    assert (result.final_dir / "adapter_model.safetensors").is_file()  # save_steps 0: final/ is the only copy
