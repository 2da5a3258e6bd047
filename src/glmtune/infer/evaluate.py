"""``glmtune eval``: generate on a dataset and score ROUGE-1/2/L and BLEU-4 like the training evaluation.

Samples follow the official demo's ``process_batch_eval``: every learned
assistant turn of a conversation is one sample, its prompt being the messages
before it (plus ``<|assistant|>``) and its reference the turn's text. A base
record (context/target) is one sample. Prompts longer than
``max_input_length`` keep ``[gMASK] sop`` and their *last* tokens (the
official demo keeps the first ones, which can cut the question itself off).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.family_format import build_prompt, parse_reply, render_tool_call
from ..data.messages import Conversation, Message
from ..metrics import compute_metrics, sample_scores
from . import generation  # the module, so generation.generate_batch is looked up per call (tests slow it)


@dataclass
class EvalSample:
    prompt: list[int]
    reference: str
    source: str
    turn: int
    """Index of the assistant message in the conversation (0 for base records)."""


@dataclass
class EvalSettings:
    batch_size: int = 8
    max_new_tokens: int = 256
    max_input_length: int | None = 1024
    max_samples: int | None = None
    temperature: float = 0.0
    """0 = greedy, as the official evaluation (do_sample=False)."""
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {self.max_samples}")


@dataclass
class EvalResult:
    metrics: dict[str, float]
    predictions: list[dict] = field(default_factory=list)
    num_samples: int = 0
    num_conversations: int = 0


def reference_text(message: Message, tokenizer) -> str:
    if message.tool_call is not None:
        return render_tool_call(message.tool_call.name, message.tool_call.parameters, tokenizer)
    return message.content.strip()


def prediction_text(raw: str, tokenizer) -> str:
    """What a reply is scored as: its content, or a tool call rendered the way references are."""
    content, call = parse_reply(raw, tokenizer)
    return render_tool_call(call.name, call.parameters, tokenizer) if call is not None else content


def cut_prompt(ids: list[int], limit: int | None, keep: int = 2) -> list[int]:
    if limit is None or len(ids) <= limit:
        return ids
    return ids[:keep] + ids[len(ids) - (limit - keep):]


def conversation_samples(conv: Conversation, tokenizer, max_input_length: int | None) -> list[EvalSample]:
    if conv.kind == "base":
        prompt = cut_prompt(build_prompt(conv, tokenizer), max_input_length)
        return [EvalSample(prompt, conv.messages[1].content.strip(), conv.where, 0)]
    samples = []
    for i, message in enumerate(conv.messages):
        if message.role == "assistant" and message.learned:
            ids = build_prompt(Conversation(conv.messages[:i], tools=conv.tools), tokenizer)
            # The assistant token is the end of the prompt; keep it when cutting.
            ids = cut_prompt(ids[:-1], None if max_input_length is None else max_input_length - 1) + ids[-1:]
            samples.append(EvalSample(ids, reference_text(message, tokenizer), conv.where, i))
    return samples


def build_samples(conversations: list[Conversation], tokenizer, settings: EvalSettings) -> list[EvalSample]:
    samples = []
    for conv in conversations:
        samples.extend(conversation_samples(conv, tokenizer, settings.max_input_length))
        if settings.max_samples is not None and len(samples) >= settings.max_samples:
            return samples[: settings.max_samples]
    return samples


def generate_all(model, tokenizer, samples: list[EvalSample], settings: EvalSettings,
                 progress: Callable[[int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> list[str]:
    """Raw decoded replies, batched by similar prompt length (less padding), in the samples' order.

    ``should_stop`` is asked before every generated token; True raises
    ``glmtune.infer.generation.GenerationStopped`` (the evaluation is abandoned).
    """
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].prompt))
    raws: list[str | None] = [None] * len(samples)
    for start in range(0, len(order), settings.batch_size):
        chunk = order[start:start + settings.batch_size]
        outs = generation.generate_batch(model, tokenizer, [samples[i].prompt for i in chunk],
                              max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                              top_p=settings.top_p, seed=None if settings.seed is None else settings.seed + start,
                              do_sample=None, should_stop=should_stop)
        for i, ids in zip(chunk, outs):
            raws[i] = tokenizer.decode(ids, skip_unknown=True)
        if progress is not None:
            progress(len(chunk))
    return raws


def evaluate(model, tokenizer, conversations: list[Conversation], settings: EvalSettings,
             progress: Callable[[int], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> EvalResult:
    samples = build_samples(conversations, tokenizer, settings)
    raws = generate_all(model, tokenizer, samples, settings, progress, should_stop)
    preds = [prediction_text(r, tokenizer) for r in raws]
    metrics = compute_metrics(preds, [s.reference for s in samples])
    rows = [{"source": s.source, "turn": s.turn, "prompt_tokens": len(s.prompt), "reference": s.reference,
             "prediction": p, "raw": r, "scores": sample_scores(p, s.reference)}
            for s, p, r in zip(samples, preds, raws)]
    return EvalResult(metrics=metrics, predictions=rows, num_samples=len(samples),
                      num_conversations=len(conversations))


def write_results(result: EvalResult, out_dir: Path, info: dict) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_path, metrics_path = out_dir / "predictions.jsonl", out_dir / "metrics.json"
    summary = {**result.metrics, "num_samples": result.num_samples,
               "num_conversations": result.num_conversations, **info}
    _replace_file(pred_path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.predictions))
    _replace_file(metrics_path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return pred_path, metrics_path


def _replace_file(path: Path, text: str) -> None:
    # Written beside it and renamed over it: a symlink at ``path`` is replaced, never written through.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def settings_dict(settings: EvalSettings) -> dict:
    return asdict(settings)
