"""Training runs as the web UI sees them: folders under an output root, and processes it started.

A run is any folder holding a ``config.yaml`` or ``trainer_log.jsonl`` (what
``glmtune train`` writes first), so runs started from the command line and
runs from an earlier UI session show up alike. Training always runs as a
separate ``python -m glmtune train CONFIG`` process (a crash or an
out-of-memory kill cannot take the UI down); its pid is kept in the run
folder so a restarted UI can still stop it. Stop sends SIGINT, which
glmtune answers by saving a checkpoint; resume is ``training.resume=yes``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import UserError
from ..train.layout import FINAL_DIR, LAUNCHER_PREFIX, LOCK_FILE, LOG_FILE, checkpoints, has_run
from ..train.plots import read_log

CONFIG_NAME = f"{LAUNCHER_PREFIX}train.yaml"
"""The resolved config the UI writes and trains from (``config.yaml`` is what the run itself saves)."""
PROCESS_FILE = f"{LAUNCHER_PREFIX}process.json"
CONSOLE_FILE = f"{LAUNCHER_PREFIX}console.log"


@dataclass
class Progress:
    """Where a run stands, from its folder alone."""

    step: int = 0
    max_steps: int | None = None
    loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eval_loss: float | None = None
    eta_seconds: float | None = None
    status: str = "not started"

    def summary(self) -> str:
        parts = [self.status, f"step {self.step}" + (f"/{self.max_steps}" if self.max_steps else "")]
        for name, value, fmt in (("loss", self.loss, ".4f"), ("lr", self.learning_rate, ".2e"),
                                 ("tokens/s", self.tokens_per_second, ".0f"), ("eval loss", self.eval_loss, ".4f")):
            if value is not None:
                parts.append(f"{name} {value:{fmt}}")
        if self.eta_seconds is not None:
            parts.append(f"ETA {format_seconds(self.eta_seconds)}")
        return " · ".join(parts)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def is_run(folder: Path) -> bool:
    return folder.is_dir() and ((folder / "config.yaml").is_file() or (folder / LOG_FILE).is_file()
                                or (folder / CONFIG_NAME).is_file())


def list_runs(root: Path) -> list[Path]:
    """Run folders in ``root`` (and ``root`` itself if it is one), newest activity first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [root] if is_run(root) else []
    found += [child for child in root.iterdir() if is_run(child)]
    return sorted(found, key=_last_activity, reverse=True)


def _last_activity(folder: Path) -> float:
    times = [p.stat().st_mtime for p in (folder / LOG_FILE, folder / "config.yaml", folder / CONFIG_NAME)
             if p.is_file()]
    return max(times, default=folder.stat().st_mtime)


def read_run_config(run_dir: Path) -> dict:
    for name in ("config.yaml", CONFIG_NAME):
        path = run_dir / name
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                return {}  # being rewritten, or not ours to judge: progress shows what the log says
            return data if isinstance(data, dict) else {}
    return {}


def _recorded_pids(run_dir: Path) -> list[int]:
    """Pids that may be training this run: the UI's process file, then the run's lock (the CLI's too)."""
    pids = []
    try:
        pids.append(int(json.loads((run_dir / PROCESS_FILE).read_text(encoding="utf-8"))["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        pids.append(int((run_dir / LOCK_FILE).read_text().strip()))
    except (OSError, ValueError):
        pass
    return pids


def running_pid(run_dir: Path) -> int | None:
    """The pid of the process training this run (from this UI, an earlier one, or the CLI), if alive."""
    for pid in _recorded_pids(run_dir):
        if _is_training(pid):
            return pid
    return None


def _is_training(pid: int) -> bool:
    try:  # pids are reused: only a live `glmtune train` process counts
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _alive_without_proc(pid) is not None
    if not any(b"glmtune" in part for part in cmdline) or b"train" not in cmdline:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    return state != "Z"


def _alive_without_proc(pid: int) -> int | None:
    # No /proc (macOS): a signal-0 probe is the best available check.
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def run_status(run_dir: Path) -> str:
    pid = running_pid(run_dir)
    if pid is not None:
        return f"running (pid {pid})"
    if (run_dir / FINAL_DIR).is_dir():
        return "finished"
    found = checkpoints(run_dir)
    if found:
        return f"stopped at checkpoint-{found[-1][0]} (resume continues it)"
    return "no checkpoint yet"


def _max_steps(config: dict) -> int | None:
    steps = (config.get("training") or {}).get("max_steps")
    return steps if isinstance(steps, int) and steps > 0 else None


def read_progress(run_dir: Path) -> Progress:
    """Step, loss, learning rate, tokens/s, eval loss and ETA from the run's log and config."""
    records = read_log(run_dir / LOG_FILE)
    progress = Progress(status=run_status(run_dir), max_steps=_max_steps(read_run_config(run_dir)))
    for record in records:
        progress.step = int(record.get("step", progress.step))
        for key in ("loss", "learning_rate", "tokens_per_second", "eval_loss"):
            if isinstance(record.get(key), (int, float)):
                setattr(progress, key, float(record[key]))
    progress.eta_seconds = _eta(run_dir, progress, records)
    return progress


def _eta(run_dir: Path, progress: Progress, records: list[dict]) -> float | None:
    # Elapsed wall time: the run writes config.yaml at its start and appends to the log at each event.
    if not records or not progress.status.startswith("running"):
        return None
    start, last = run_dir / "config.yaml", run_dir / LOG_FILE
    if not start.is_file():
        return None
    elapsed = last.stat().st_mtime - start.stat().st_mtime
    config = read_run_config(run_dir)
    if progress.max_steps:
        done = progress.step / progress.max_steps
    else:
        epochs = (config.get("training") or {}).get("num_epochs")
        epoch = records[-1].get("epoch")
        done = epoch / epochs if isinstance(epochs, (int, float)) and epochs and isinstance(epoch, (int, float)) else 0
    if done <= 0 or elapsed <= 0:
        return None
    return max(elapsed * (1 - done) / done, 0.0)


def log_tail(run_dir: Path, lines: int = 30) -> str:
    """The last lines of the training process's console (progress-bar redraws collapsed)."""
    path = run_dir / CONSOLE_FILE
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 64_000))
        text = f.read().decode("utf-8", errors="replace")
    shown = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join([line for line in shown if line.strip()][-lines:])


def start_training(run_dir: Path, config: dict, *, resume: bool = False,
                   overrides: list[str] | None = None) -> subprocess.Popen:
    """Write ``config`` to the run folder and start ``python -m glmtune train`` on it, detached from the UI.

    ``resume`` adds ``training.resume=yes`` (the newest checkpoint) and trains
    from the YAML already in the folder (the UI's, else the ``config.yaml`` a
    CLI run saved); ``overrides`` are more ``key=value`` arguments. Refused
    while the run's process is alive, and a fresh start in a folder that
    already holds a run.
    """
    run_dir = Path(run_dir)
    pid = running_pid(run_dir)
    if pid is not None:
        raise UserError(f"{run_dir}: a training process (pid {pid}) is still running; stop it first")
    if resume:
        config_path = next((run_dir / n for n in (CONFIG_NAME, "config.yaml") if (run_dir / n).is_file()), None)
        if config_path is None:
            raise UserError(f"{run_dir}: no {CONFIG_NAME} or config.yaml to resume from; start a new run instead")
    else:
        if has_run(run_dir):
            raise UserError(f"{run_dir} already holds a run; choose another run name, or select it in the "
                            "runs list and press Resume")
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / CONFIG_NAME
        config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    command = [sys.executable, "-m", "glmtune", "train", str(config_path)]
    if resume:
        command.append("training.resume=yes")
    command += list(overrides or [])
    console = (run_dir / CONSOLE_FILE).open("ab")
    console.write(f"\n$ {' '.join(command)}\n".encode())
    console.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Own session: a Ctrl-C in the UI's terminal does not stop training; the UI's Stop button does.
    proc = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True, cwd=run_dir)
    console.close()
    # Reap the child when it exits (no zombie left behind while the UI runs on).
    threading.Thread(target=proc.wait, daemon=True).start()
    (run_dir / PROCESS_FILE).write_text(json.dumps({"pid": proc.pid, "command": command,
                                                    "started": time.time()}) + "\n", encoding="utf-8")
    return proc


def stop_training(run_dir: Path) -> str:
    """SIGINT to the run's process: it finishes the step, saves a checkpoint and exits."""
    pid = running_pid(Path(run_dir))
    if pid is None:
        return f"{run_dir}: no training process is running for this run"
    os.kill(pid, signal.SIGINT)
    return f"sent SIGINT to pid {pid}: a checkpoint is saved after the current step"
