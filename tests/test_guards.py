"""fp16 safeguards: a collapsing run stops with the cause and the fix instead of training on at loss NaN or 0."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from glmtune.config import load_config
from glmtune.train import TrainingError, run_training
from glmtune.train.guards import LossGuard
from glmtune.train.layout import FINAL_DIR, LOG_FILE


def _state(step=7):
    return SimpleNamespace(global_step=step, epoch=0.5)


def test_half_precision_weights_driven_to_overflow_stop_with_the_message(tiny_workspace, tmp_path):
    """Frozen weights stored in fp16 with a far too high learning rate: the activations overflow to NaN."""
    data = next((tiny_workspace["out"] / "data").glob("*.json*"))
    out = tmp_path / "run"
    cfg = load_config({
        "model": {"path": str(tiny_workspace["model"]), "dtype": "fp16"},
        "data": {"train_file": str(data), "max_input_length": 16, "max_output_length": 16, "max_samples": 4},
        "method": {"name": "lora"},
        "training": {"learning_rate": 30.0, "max_steps": 8, "batch_size": 1, "logging_steps": 1, "save_steps": 0,
                     "lr_scheduler": "constant", "max_grad_norm": 0},
        "evaluation": {"strategy": "no", "generate": False},
        "output": {"dir": str(out), "plots": False},
    })
    with pytest.raises(TrainingError, match=r"loss is nan at step \d.*likely cause: .*training.learning_rate"):
        run_training(cfg, quiet=True)
    assert not (out / FINAL_DIR).exists()  # nothing trained on NaN weights is saved as a result
    logged = [json.loads(line)["loss"] for line in (out / LOG_FILE).read_text().splitlines() if '"loss"' in line]
    assert all(math.isfinite(x) and x > 0 for x in logged)  # never a silent 0 or NaN in the log


@pytest.mark.parametrize("loss", [0.0, float("nan"), float("inf")])
def test_fp16_collapse_names_fp16_and_the_fix(loss):
    with pytest.raises(TrainingError) as info:
        LossGuard().on_log(SimpleNamespace(fp16=True), _state(), None, logs={"loss": loss})
    message = str(info.value)
    assert f"training loss is {loss} at step 7" in message
    assert "fp16 overflowed" in message and "training.precision=bf16" in message
    assert "training.loss_guard=false" in message


def test_zero_loss_in_fp32_points_at_the_data():
    with pytest.raises(TrainingError, match=r"loss is 0.0 .*labels are all masked.*glmtune data check"):
        LossGuard().on_log(SimpleNamespace(fp16=False), _state(), None, logs={"loss": 0.0})


def test_nan_in_fp32_points_at_the_learning_rate():
    with pytest.raises(TrainingError, match=r"loss is nan .*training.learning_rate"):
        LossGuard().on_log(SimpleNamespace(fp16=False, learning_rate=1e-4), _state(), None, logs={"loss": float("nan")})


def test_healthy_and_eval_logs_pass():
    guard = LossGuard()
    for logs in ({"loss": 2.3}, {"loss": 1e-4}, {"eval_loss": 0.0}, {"learning_rate": 0.0}, None):
        guard.on_log(SimpleNamespace(fp16=True), _state(), None, logs=logs)


def test_guard_is_on_by_default_and_can_be_turned_off():
    base = {"model": {"path": "tiny"}, "data": {"train_file": "x.json"}}
    assert load_config(base, check_files=False).training.loss_guard is True
    assert load_config(base, ["training.loss_guard=false"], check_files=False).training.loss_guard is False
