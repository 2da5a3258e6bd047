"""Generation-based evaluation during and after training: exactly what ``glmtune eval`` does.

Samples, generation and scoring are :mod:`glmtune.infer.evaluate`'s (one
implementation, so ``OUTPUT/test/metrics.json`` equals ``glmtune eval`` on
the same model and data): every learned assistant turn is one sample (the
official demo's ``process_batch_eval``), prompts over ``max_input_length``
keep ``[gMASK] sop`` and their last tokens, answers are greedy, and replies
are parsed (``parse_reply``) so a tool call is scored as the reference renders
it. Predictions go to ``predictions.jsonl`` and scores to ``metrics.json`` in
``OUTPUT/eval/step-N/`` (validation) or ``OUTPUT/test/``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..infer.evaluate import EvalSettings, evaluate, write_results
from ..infer.generation import GenerationStopped


@dataclass
class GenerationEval:
    """Generate for a bounded set of conversations and score them; one instance per split."""

    conversations: list
    """``glmtune.data.messages.Conversation`` objects of the split."""
    tokenizer: object
    out_dir: Path
    settings: object
    """``glmtune.infer.evaluate.EvalSettings`` (batch size, max_new_tokens, max_input_length, max_samples)."""
    write: bool = True
    """Write predictions and metrics (the world process zero only; every process generates the same)."""
    should_stop: Callable[[], bool] | None = None
    """Asked before each generated token: True abandons the evaluation (no scores, nothing written)."""
    progress: bool = True
    """Show a progress bar (samples generated) on stderr."""

    def run(self, model, name: str) -> dict[str, float]:
        """Scores of ``model``; predictions and metrics written under ``out_dir/name``."""
        # deferred: tqdm.auto is slow to import; only a shown bar needs it
        from tqdm.auto import tqdm


        if not self.conversations or self._stop():
            return {}
        started = time.perf_counter()
        bar = tqdm(desc=f"eval {name}", unit="sample", disable=not self.progress, leave=False,
                   dynamic_ncols=True, file=sys.stderr)
        try:
            result = evaluate(model, self.tokenizer, self.conversations, self.settings, progress=bar.update,
                              should_stop=self._stop)
        except GenerationStopped:
            return {}
        finally:
            bar.close()
        if not result.num_samples:
            return {}
        if self.write:
            write_results(result, self.out_dir / name, {"seconds": round(time.perf_counter() - started, 2)})
        return result.metrics

    def _stop(self) -> bool:
        return self.should_stop is not None and self.should_stop()


def eval_settings(cfg, max_samples: int | None):
    """The evaluation settings of a training config (the same fields ``glmtune eval`` takes as flags)."""
    return EvalSettings(batch_size=cfg.evaluation.batch_size or cfg.training.batch_size,
                        max_new_tokens=cfg.evaluation.max_new_tokens, max_input_length=cfg.data.max_input_length,
                        max_samples=max_samples)
