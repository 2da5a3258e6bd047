"""Training under faults: signals, a second writer, kill -9 while checkpointing, a full disk, a read-only folder.

Real processes (``python -m glmtune train``) where the fault is a process's fate;
in-process runs otherwise. The disk cases mount a small tmpfs (we run as root
in CI); they skip, saying why, only where mounting is not allowed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_train_loop import _cfg, workdir  # noqa: F401  (workdir is a fixture)
from transformers import TrainerCallback

from glmtune.config import ConfigError
from glmtune.train import TrainingError, run_training
from glmtune.train.layout import checkpoints, is_complete


def _config_file(workdir, out: Path, **training) -> Path:
    import yaml

    cfg = {"model": {"path": "tiny", "tokenizer": str(workdir / "tok"), "device": "cpu"},
           "data": {"train_file": str(workdir / "train.jsonl"), "max_input_length": 16, "max_output_length": 16,
                    "cache": False},
           "method": {"name": "lora"},
           "training": {"max_steps": 400, "batch_size": 2, "learning_rate": 1e-3, "logging_steps": 1,
                        "save_steps": 0, "seed": 3, "tensorboard": False, **training},
           "evaluation": {"strategy": "no"},
           "output": {"dir": str(out), "plots": False}}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train_process(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "glmtune", "train", str(config), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("training made no progress in time")
        time.sleep(0.05)


def _logged_steps(out: Path) -> list[int]:
    log = out / "trainer_log.jsonl"
    if not log.is_file():
        return []
    return [json.loads(x)["step"] for x in log.read_text().splitlines() if x.strip().endswith("}")]


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_a_second_writer_is_refused(workdir, tmp_path, sig, status):
    out = tmp_path / "out"
    # Far more steps than the test can take: with packed batches 400 tiny steps can finish (and the run restore the
    # default signal handlers) while the second `glmtune train` below starts up.
    config = _config_file(workdir, out, max_steps=1_000_000)
    proc = _train_process(config)
    _wait_for(lambda: len(_logged_steps(out)) >= 2, proc)
    if sig == signal.SIGTERM:  # meanwhile a second `glmtune train` on the same folder is turned away
        second = subprocess.run([sys.executable, "-m", "glmtune", "train", str(config), "training.resume=yes"],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and f"in use by another glmtune process (pid {proc.pid})" in second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err[-2000:]
    step = _logged_steps(out)[-1]
    assert [n for n, _ in checkpoints(out)] == [step] and f"{sig.name} received" in err
    assert not list(out.glob(".tmp-*"))


def test_kill_9_while_checkpointing_leaves_only_complete_checkpoints(workdir, tmp_path):
    out = tmp_path / "out"
    # A checkpoint every step: most of the run's time is spent writing one, so the kill lands in a save.
    proc = _train_process(_config_file(workdir, out, save_steps=1, save_total_limit=2))
    _wait_for(lambda: len(checkpoints(out)) >= 2, proc)
    time.sleep(0.15)
    proc.kill()
    proc.wait()
    folders = list(out.glob("checkpoint-*"))
    assert folders and all(is_complete(f) for f in folders), [sorted(os.listdir(f)) for f in folders]
    newest = checkpoints(out)[-1][0]
    cfg = _cfg(workdir, out, **{"data.data_dir": "", "data.train_file": str(workdir / "train.jsonl"),
                                "training.batch_size": 2, "training.learning_rate": 1e-3, "training.save_steps": 1,
                                "training.save_total_limit": 2, "training.max_steps": newest + 1,
                                "training.resume": "yes", "training.resume_allow_changes": "true"})
    result = run_training(cfg, quiet=True)
    assert result.global_step == newest + 1 and result.final_dir.is_dir()
    assert not list(out.glob(".tmp-*"))


@contextmanager
def _tmpfs(where: Path, options: str):
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


class _FillDiskAfterFirstSave(TrainerCallback):
    def __init__(self, disk: Path, keep: int):
        self.disk, self.keep = disk, keep

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 1:
            stats = os.statvfs(self.disk)
            free = stats.f_bavail * stats.f_frsize
            with open(self.disk / "filler", "wb") as f:
                f.write(b"\0" * max(free - self.keep, 0))


def test_disk_full_while_checkpointing_is_one_clear_error_and_keeps_the_last_checkpoint(workdir, tmp_path):
    with _tmpfs(tmp_path / "disk", "size=4m") as disk:
        out = disk / "run"
        over = {"training.max_steps": 3, "training.save_steps": 1, "output.dir": str(out)}
        with pytest.raises(TrainingError) as err:
            run_training(_cfg(workdir, out, **over), quiet=True, callbacks=[_FillDiskAfterFirstSave(disk, 16384)])
        message = str(err.value)
        assert "No space left on device" in message and "checkpoint-1 is intact" in message
        assert "training.resume=yes" in message and "\n" not in message
        assert [n for n, _ in checkpoints(out)] == [1] and not list(out.glob(".tmp-*"))
        (disk / "filler").unlink()  # the user frees space and resumes
        result = run_training(_cfg(workdir, out, **over, **{"training.resume": "yes"}), quiet=True)
        assert result.global_step == 3 and result.final_dir.is_dir()


def test_read_only_output_folder_is_one_clear_error(workdir, tmp_path, capsys):
    from glmtune.cli import main

    with _tmpfs(tmp_path / "ro", "size=1m,ro") as ro:
        with pytest.raises(ConfigError, match=r"output.dir .*run is not writable \(Read-only file system\)"):
            run_training(_cfg(workdir, ro / "run"), quiet=True)
        config = _config_file(workdir, tmp_path / "cli")
        assert main(["train", str(config), f"output.dir={ro / 'run'}", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("glmtune: error: ") and "not writable" in err and err.count("\n") == 1
