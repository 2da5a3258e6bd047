"""Training: one Hugging Face Trainer loop for every method, with resume, evaluation and loss curves.

Entry point: :func:`run_training` (``glmtune train`` and the quickstart call it).
The run folder layout is documented in :mod:`glmtune.train.layout`.
"""

from .run import TrainResult, describe, run_training
from .trainer import GlmTrainer, TrainingError

__all__ = ["GlmTrainer", "TrainResult", "TrainingError", "describe", "run_training"]
