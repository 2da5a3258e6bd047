"""Trainer callbacks: the JSONL log, the progress bar, and clean stops on SIGINT/SIGTERM."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

# Keys HF puts in its end-of-training summary: not a step event for our log.
_SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss")


class JsonlLogCallback(TrainerCallback):
    """Append one JSON line per log event to ``trainer_log.jsonl``, with real tokens/s.

    Only the world process zero writes (every process keeps ``last_loss``).

    tokens/s counts non-padding tokens only (``GlmTrainer.real_tokens``), over
    the wall time since the previous log event, so it shows the current speed.
    """

    def __init__(self, path: Path, trainer=None):
        self.path = path
        self.trainer = trainer
        self._last_time = None
        self._last_tokens = 0
        self.last_loss: float | None = None
        self.last_tokens_per_second: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens = self.trainer.real_tokens if self.trainer else 0
        if not state.is_world_process_zero or not self.path.is_file():
            return  # one process writes the log
        # Drop lines past the starting step: a resume replays them, and a fresh start owns an empty log.
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and state.global_step and json.loads(line).get("step", 0) <= state.global_step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        if any(k in logs for k in _SUMMARY_KEYS):
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if "loss" in logs and self.trainer is not None:
            now = time.perf_counter()
            tokens = self.trainer.real_tokens - self._last_tokens
            elapsed = max(now - (self._last_time or now), 1e-9)
            record["tokens_per_second"] = round(tokens / elapsed, 2)
            self.last_tokens_per_second = record["tokens_per_second"]
            self._last_time, self._last_tokens = now, self.trainer.real_tokens
            self.last_loss = float(logs["loss"])
        record.update({k: v for k, v in logs.items() if isinstance(v, (int, float, str))})
        if not state.is_world_process_zero:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


class ProgressCallback(TrainerCallback):
    """A tqdm bar: steps, loss, learning rate, real tokens/s and ETA (tqdm's own remaining time)."""

    def __init__(self, log: JsonlLogCallback, enabled: bool = True):
        self.log = log
        self.enabled = enabled
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.enabled and state.is_world_process_zero:  # one bar, not one per process
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                            dynamic_ncols=True, file=sys.stderr)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        post = {}
        if "loss" in logs:
            post["loss"] = f"{logs['loss']:.4f}"
        if "learning_rate" in logs:
            post["lr"] = f"{logs['learning_rate']:.2e}"
        if self.log.last_tokens_per_second is not None:
            post["tok/s"] = f"{self.log.last_tokens_per_second:.0f}"
        if "eval_loss" in logs:
            post["eval_loss"] = f"{logs['eval_loss']:.4f}"
        if post:
            self.bar.set_postfix(post, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StopOnSignalCallback(TrainerCallback):
    """On SIGINT/SIGTERM: finish the current step, save a checkpoint, stop.

    The handler only sets a flag (signal handlers must not do I/O in the middle
    of a step); the callback turns it into ``should_save`` + ``should_training_stop``
    at the end of the step. A second signal restores the default behaviour, so
    pressing Ctrl-C twice still kills a stuck run.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # Python only delivers signals to the main thread
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        self.received = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        print(f"\nglmtune: {signal.Signals(signum).name} received; saving a checkpoint after this step "
              "(send it again to stop at once)", file=sys.stderr)

    def on_step_end(self, args, state, control, **kwargs):
        if _any_process(self.received is not None):
            control.should_save = True
            control.should_training_stop = True
        return control


def _any_process(flag: bool) -> bool:
    """``flag`` OR-ed over all processes of a distributed run (itself otherwise).

    A signal can reach torchrun's processes on different sides of a step end;
    if only some stopped, the others' next gradient all-reduce (and the
    checkpoint barriers) would wait forever. One tiny collective per step.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
