"""A stop request (Ctrl-C during training's evaluation) ends a long generation at its next token."""

from __future__ import annotations

import pytest

from glmtune.data.messages import Conversation, Message
from glmtune.infer.evaluate import EvalSettings
from glmtune.infer.generation import GenerationStopped, generate_batch
from glmtune.train.evaluation import GenerationEval


class _Counter:
    """Counts the model's forward calls (one per generated token) and asks for a stop after ``after`` of them."""

    def __init__(self, model, after: int):
        self.calls, self.after = 0, after
        model.register_forward_hook(self._seen)

    def _seen(self, module, args, output) -> None:
        self.calls += 1

    def should_stop(self) -> bool:
        return self.calls >= self.after


def test_stop_request_ends_a_long_generation_at_the_next_token(tiny_model, tokenizer):
    counter = _Counter(tiny_model, after=5)
    with pytest.raises(GenerationStopped):
        generate_batch(tiny_model, tokenizer, [[64790, 64792, 30910], [64790, 64792]], max_new_tokens=500,
                       stop_ids=(), should_stop=counter.should_stop)
    assert counter.calls == 5  # not 500
    # Without a stop request the same call runs to its end.
    assert [len(r) for r in generate_batch(tiny_model, tokenizer, [[64790, 64792]], max_new_tokens=7,
                                           stop_ids=())] == [7]


def test_training_evaluation_stops_inside_its_first_batch(tiny_model, tokenizer, tmp_path):
    conversations = [Conversation([Message("user", f"question {i}"), Message("assistant", "answer")])
                     for i in range(3)]
    counter = _Counter(tiny_model, after=3)
    settings = EvalSettings(batch_size=1, max_new_tokens=400, max_input_length=64)
    evaluation = GenerationEval(conversations, tokenizer, tmp_path / "eval", settings, should_stop=counter.should_stop,
                                progress=False)
    assert evaluation.run(tiny_model, "step-2") == {}
    assert counter.calls == 3  # the first batch alone would have been 400 forward calls
    assert not (tmp_path / "eval").exists()  # an abandoned evaluation writes no scores
