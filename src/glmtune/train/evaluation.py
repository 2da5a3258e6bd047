"""Generation-based evaluation: prompts from encoded samples, greedy answers, official metrics.

As the official demo (``process_batch_eval``), every learned assistant turn
gives one (prompt, reference) pair (``Splits.eval_prompts``): the prompt is
everything before the turn, ending with ``<|assistant|>``. Answers are
generated greedily, left-padded in batches, with the chat stop tokens.
Predictions go to ``predictions.jsonl`` and scores to ``metrics.json`` in
``OUTPUT/eval/step-N/`` (validation) or ``OUTPUT/test/``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..metrics import compute_metrics
from .trainer import write_json

@dataclass
class GenerationEval:
    """Generate for a bounded set of prompts and score them; one instance per split."""

    pairs: list[tuple[list[int], str]]
    tokenizer: object
    out_dir: Path
    max_new_tokens: int = 512
    batch_size: int = 8

    def run(self, model, name: str) -> dict[str, float]:
        """Scores of ``model`` on the pairs; predictions and metrics written under ``out_dir/name``."""
        from ..infer.generation import generate_batch

        if not self.pairs:
            return {}
        started = time.perf_counter()
        predictions: list[str] = []
        for i in range(0, len(self.pairs), self.batch_size):
            prompts = [p for p, _ in self.pairs[i:i + self.batch_size]]
            outputs = generate_batch(model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens)
            predictions += [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in outputs]
        references = [r for _, r in self.pairs]
        scores = compute_metrics(predictions, references)
        folder = self.out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "predictions.jsonl").open("w", encoding="utf-8") as f:
            for (prompt, reference), prediction in zip(self.pairs, predictions):
                prompt_text = self.tokenizer.decode(prompt)
                f.write(json.dumps({"prompt": prompt_text, "reference": reference, "prediction": prediction},
                                   ensure_ascii=False) + "\n")
        summary = {**scores, "samples": len(predictions), "seconds": round(time.perf_counter() - started, 2)}
        write_json(folder / "metrics.json", summary)
        return scores
