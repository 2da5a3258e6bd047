"""Trainer callbacks: the JSONL log, the progress bar, and clean stops on SIGINT/SIGTERM."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from .trainer import TrainingError

# Keys HF puts in its end-of-training summary: not a step event for our log.
_SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss")


class JsonlLogCallback(TrainerCallback):
    """Append one JSON line per log event to ``trainer_log.jsonl``, with real tokens/s.

    Only the world process zero writes (every process keeps ``last_loss``).

    tokens/s counts non-padding tokens only (``GlmTrainer.real_tokens``), over
    the wall time since the previous log event less the time spent evaluating
    (``GlmTrainer.eval_seconds``), so it shows the current training speed.
    """

    def __init__(self, path: Path, trainer=None):
        self.path = path
        self.trainer = trainer
        self._last_time = None
        self._last_tokens = 0
        self._last_eval = 0.0
        self.last_loss: float | None = None
        self.last_tokens_per_second: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens = self.trainer.real_tokens if self.trainer else 0
        self._last_eval = self.trainer.eval_seconds if self.trainer else 0.0
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
            now, evaluating = time.perf_counter(), self.trainer.eval_seconds
            tokens = self.trainer.real_tokens - self._last_tokens
            elapsed = max(now - (self._last_time or now) - (evaluating - self._last_eval), 1e-9)
            record["tokens_per_second"] = round(tokens / elapsed, 2)
            self.last_tokens_per_second = record["tokens_per_second"]
            self._last_time, self._last_tokens, self._last_eval = now, self.trainer.real_tokens, evaluating
            self.last_loss = float(logs["loss"])
        record.update({k: v for k, v in logs.items() if isinstance(v, (int, float, str))})
        if not state.is_world_process_zero:
            return
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as exc:  # disk full, folder made read-only: stop with the reason, not a traceback

            raise TrainingError(f"could not write {self.path} ({exc.strerror}); checkpoints written so far are "
                                "intact: free disk space or fix the folder's permissions, then resume with "
                                "training.resume=yes") from None


class ProgressCallback(TrainerCallback):
    """A tqdm bar: steps, loss, learning rate, real tokens/s and ETA (tqdm's own remaining time)."""

    def __init__(self, log: JsonlLogCallback, enabled: bool = True):
        self.log = log
        self.enabled = enabled
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.enabled and state.is_world_process_zero:  # one bar, not one per process
            # deferred: tqdm.auto is slow to import; only a shown bar needs it
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
    at the end of the step, or after an evaluation (which itself stops at its
    next generated token, see ``GenerationEval.should_stop``). A second signal
    does not abandon the checkpoint being made; a third restores the default
    behaviour, so a stuck run can still be killed (the newest complete checkpoint stays).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    PATIENCE = 2
    """Signals absorbed before the default behaviour comes back."""

    def __init__(self):
        self.received: int | None = None
        self.count = 0
        self._previous: dict[int, object] = {}

    @property
    def stop_requested(self) -> bool:
        return self.received is not None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python only delivers signals to the main thread
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        self.count += 1
        self.received = self.received or signum
        name = signal.Signals(signum).name
        if self.count >= self.PATIENCE:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            print(f"\nglmtune: {name} again; still saving the checkpoint of the last finished step "
                  "(send it once more to exit at once, without it)", file=sys.stderr)
            return
        print(f"\nglmtune: {name} received; saving a checkpoint after this step "
              "(an evaluation in progress stops at its next token)", file=sys.stderr)

    def _stop(self, control):
        if _any_process(self.received is not None):
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_step_end(self, args, state, control, **kwargs):
        return self._stop(control)

    def on_evaluate(self, args, state, control, **kwargs):
        return self._stop(control)  # a signal that arrived while evaluating: save now, not after another step


class OfficialEvalSchedule(TrainerCallback):
    """Evaluate only every ``eval_steps`` steps, as the official run (transformers 4.40) does.

    transformers >= 4.46 also evaluates at the last step when it is not a
    multiple of ``eval_steps``; with generation (50 samples x 512 tokens) that is
    minutes the official demo never spends. Runs after HF's DefaultFlowCallback.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if args.eval_strategy == "steps" and state.eval_steps and state.global_step % state.eval_steps != 0:
            control.should_evaluate = False
        return control


def _any_process(flag: bool) -> bool:
    """``flag`` OR-ed over all processes of a distributed run (itself otherwise).

    A signal can reach torchrun's processes on different sides of a step end;
    if only some stopped, the others' next gradient all-reduce (and the
    checkpoint barriers) would wait forever. One tiny collective per step.
    """

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
