"""Generation metrics exactly as the official ChatGLM3 fine-tune demo computes them.

``finetune_demo/finetune_hf.py`` (``compute_metrics``) does, per sample:
strip both texts, segment them with jieba, score ROUGE-1/2/L with
``rouge_chinese.Rouge`` on the space-joined segments (F-measure x 100, rounded
to 4 decimals) and BLEU-4 with ``nltk``'s ``sentence_bleu`` and smoothing
``method3`` on the segment lists (left on its 0..1 scale, as the demo does),
then averages each metric over the samples. Keeping the same numbers lets
users compare runs with the demo's published figures.

One deliberate difference: the demo crashes (``ValueError: Hypothesis is
empty``) when a prediction is empty or only whitespace, which happens with
untrained models; such a sample scores 0 on every metric here instead.
"""

from __future__ import annotations

import logging
import math

METRIC_NAMES = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")


def _segment(text: str) -> list[str]:
    # deferred: metric libraries load slowly (jieba's dictionary); only scoring needs them
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading chatter is not ours to print
    # jieba keeps whitespace runs as tokens; rouge_chinese splits on spaces, so
    # they vanish there, exactly as in the demo.
    return list(jieba.cut(text.strip()))


def sample_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L (x100, 4 decimals) and BLEU-4 (0..1) of one prediction."""
    # deferred: metric libraries load slowly (jieba's dictionary); only scoring needs them
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    pred_tokens = _segment(prediction)
    label_tokens = _segment(reference)
    scores = dict.fromkeys(METRIC_NAMES, 0.0)
    if not " ".join(pred_tokens).split() or not " ".join(label_tokens).split():
        return scores  # rouge_chinese refuses empty texts; an empty answer scores 0
    rouge = Rouge().get_scores(" ".join(pred_tokens), " ".join(label_tokens))[0]
    for key, value in rouge.items():
        scores[key] = round(value["f"] * 100, 4)
    scores["bleu-4"] = float(
        sentence_bleu([label_tokens], pred_tokens, smoothing_function=SmoothingFunction().method3)
    )
    return scores


def compute_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L and BLEU-4 over ``predictions`` against ``references`` (decoded texts).

    Returns ``{"rouge-1", "rouge-2", "rouge-l", "bleu-4"}``; an empty input gives NaNs
    (as ``numpy.mean([])`` does in the demo, but without the warning).
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"compute_metrics: {len(predictions)} predictions but {len(references)} references; "
            "pass one reference per prediction"
        )
    if not predictions:
        return dict.fromkeys(METRIC_NAMES, math.nan)
    totals = dict.fromkeys(METRIC_NAMES, 0.0)
    for prediction, reference in zip(predictions, references):
        for key, value in sample_scores(prediction, reference).items():
            totals[key] += value
    return {key: total / len(predictions) for key, total in totals.items()}
