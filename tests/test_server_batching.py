"""The serving batcher on its own: rows that join a running batch (plain and P-Tuning caches) get the tokens
they get alone; cancelled rows leave; stop strings are cut while streaming."""

from __future__ import annotations

import random
import time

import pytest
import torch

from glmtune import load_model
from glmtune.infer.batching import DONE, Batcher
from glmtune.infer.generation import generate_stream
from glmtune.infer.openai_api import StopText
from glmtune.infer.sampling import SamplingConfig, make_generator
from glmtune.methods import prepare


def _tokens(job, timeout: float = 60) -> list[int]:
    out = []
    while (item := job.out.get(timeout=timeout)) is not DONE:
        assert not isinstance(item, BaseException), item
        out.append(item)
    return out


def _requests(vocab: int, n: int = 8) -> list[tuple[list[int], SamplingConfig]]:
    rng = random.Random(0)
    return [([rng.randrange(5, vocab - 5) for _ in range(rng.randrange(3, 20))],
             SamplingConfig(max_new_tokens=rng.randrange(8, 30), temperature=rng.choice([0, 0.9]), top_p=0.9,
                            repetition_penalty=rng.choice([1.0, 1.3]), seed=i))
            for i in range(n)]


def _alone(model, prompt, cfg) -> list[int]:
    return list(generate_stream(model, prompt, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                top_p=cfg.top_p, repetition_penalty=cfg.repetition_penalty,
                                generator=make_generator(cfg.seed, "cpu"), stop_ids=()))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is slower with threads fighting over shared cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(trained_tokenizer):
    vocab = trained_tokenizer.vocab_size
    plain = load_model("tiny", dtype="fp32", vocab_size=vocab, seed=0).eval()
    torch.manual_seed(0)
    ptuning = prepare(load_model("tiny", dtype="fp32", vocab_size=vocab, seed=0), "ptuning",
                      {"num_virtual_tokens": 4}).model
    with torch.no_grad():
        ptuning.prefix_encoder.embedding.weight.normal_(0, 2.0)
    return {"plain": plain, "ptuning": ptuning.eval()}


@pytest.mark.parametrize("kind", ["plain", "ptuning"])
def test_rows_joining_a_running_batch_get_their_alone_tokens(models, trained_tokenizer, kind):
    model = models[kind]
    requests = _requests(trained_tokenizer.vocab_size)
    batcher = Batcher(model, trained_tokenizer, max_batch=8)
    try:
        jobs = []
        for i, (prompt, cfg) in enumerate(requests):
            jobs.append(batcher.submit(prompt, cfg, ()))
            if i % 3 == 2:
                time.sleep(0.05)  # the next ones join a batch that is already decoding
        got = [_tokens(job) for job in jobs]
    finally:
        batcher.close()
    assert got == [_alone(model, prompt, cfg) for prompt, cfg in requests]
    assert [len(g) for g in got] == [cfg.max_new_tokens for _, cfg in requests]
    # Fewer forwards than one request at a time would need (prefill + one per token after the first).
    assert batcher.steps < sum(cfg.max_new_tokens for _, cfg in requests)


def test_cancelled_row_leaves_and_the_others_go_on(models, trained_tokenizer):
    model = models["plain"]
    endless = SamplingConfig(max_new_tokens=10**6, temperature=0)
    short = SamplingConfig(max_new_tokens=12, temperature=0)
    batcher = Batcher(model, trained_tokenizer, max_batch=4)
    try:
        stay, leave = batcher.submit([7, 8, 9], short, ()), batcher.submit([10, 11], endless, ())
        first = leave.out.get(timeout=60)
        leave.cancel()
        assert _tokens(stay) == _alone(model, [7, 8, 9], short)
        rest = _tokens(leave)  # ends: the row was dropped
        assert [first, *rest] == _alone(model, [10, 11], SamplingConfig(max_new_tokens=1 + len(rest), temperature=0))
        steps = batcher.steps
        time.sleep(0.2)
        assert batcher.steps == steps  # idle: nothing left generating
    finally:
        batcher.close()


def test_stop_text_cuts_before_the_stop_and_holds_back_a_possible_start():
    cut = StopText(["END", "\n\n"])
    shown = [cut.push(piece) for piece in ["Hello E", "N", "ough ", "said E", "ND and more"]]
    assert shown == ["Hello ", "", "ENough ", "said ", ""] and cut.hit and cut.text == "Hello ENough said "
    free = StopText(["END"])
    assert [free.push("abc E"), free.push("N"), free.flush()] == ["abc ", "", "EN"] and not free.hit
    assert StopText([]).push("anything") == "anything"
