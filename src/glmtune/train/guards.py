"""The loss guard: a run whose loss collapses (NaN, inf, or exactly 0) stops, saying why and what to change.

A loss of exactly 0 is never a real result for a language model: it is what an fp16 run shows after its
weights or logits overflowed (the Trainer's NaN filter leaves a sum of nothing), or a batch whose every
label is masked. Training on would only burn GPU hours and overwrite good checkpoints with broken ones.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback

from .trainer import TrainingError, nonfinite_cause


def collapse_advice(loss: float, args) -> str:
    """The likely cause of a collapsed loss and the fix, for this run's precision (``args``: TrainingArguments)."""
    if args.fp16:
        cause = ("fp16 overflowed: half-precision activations or logits exceeded 65504 (fp16-only GPUs: V100, T4, "
                 "20-series)")
        fix = ("train in bf16 where the GPU has it (training.precision=bf16), else in fp32 "
               "(training.precision=fp32, or model.dtype=fp32 with QLoRA's model.quantization.bits=4 to fit), and "
               "lower training.learning_rate; trainable weights are already float32 and the loss is scaled")
    elif loss == 0:
        cause = "the model predicts its labels with certainty, or the labels are all masked"
        fix = ("check the data (glmtune data check: answers present, not truncated away by data.max_output_length) "
               "and lower training.learning_rate")
    else:
        return f"likely cause: {nonfinite_cause(args, None)}. To train on regardless, set training.loss_guard=false"
    return f"likely cause: {cause}. Fix: {fix}. To train on regardless, set training.loss_guard=false"


class LossGuard(TrainerCallback):
    """Raise :class:`TrainingError` when a logged training loss is not finite or exactly 0."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None or (math.isfinite(loss) and loss != 0):
            return
        raise TrainingError(
            f"training loss is {loss} at step {state.global_step} (epoch {state.epoch or 0:.2f}), so the run was "
            f"stopped; {collapse_advice(loss, args)}. Nothing after the last checkpoint was saved."
        )


__all__ = ["LossGuard", "collapse_advice"]
