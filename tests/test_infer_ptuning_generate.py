"""P-Tuning models generate like any transformers model; generation raises no deprecation warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file
from transformers.generation.streamers import BaseStreamer

from conftest import TINY, need_fixtures
from glmtune import load_model
from glmtune.infer import generate_batch
from glmtune.methods import PrefixOptions, prepare


def test_load_model_with_prefix_generates_official_greedy_ids():
    need_fixtures()
    ref = load_file(str(TINY / "reference.safetensors"))
    model = load_model(TINY, dtype="fp32", prefix=TINY / "ptuning")
    ids = ref["single_input_ids"].reshape(1, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    assert out[0, ids.shape[1]:].tolist() == ref["ptuning_greedy_ids"].reshape(-1).tolist()


@pytest.fixture(scope="module")
def prefix_model():
    """A tiny GLM prepared for P-Tuning training, with a non-trivial prefix, in eval mode."""
    torch.manual_seed(0)
    model = prepare(load_model("tiny", dtype="fp32", vocab_size=300, seed=0), "ptuning",
                    {"num_virtual_tokens": 4}).model
    with torch.no_grad():
        model.prefix_encoder.embedding.weight.normal_(0, 2.0)
    return model.eval()


def _prompts():
    return [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22]]


def _left_pad(prompts):
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def test_prepared_prefix_model_generate_matches_our_loop_on_a_padded_batch(prefix_model):
    ids, mask = _left_pad(_prompts())
    out = prefix_model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    ours = generate_batch(prefix_model, _FakeTok(), _prompts(), max_new_tokens=6, stop_ids=())
    assert out[:, ids.shape[1]:].tolist() == ours
    for row, prompt in enumerate(_prompts()):  # each row as it comes out alone
        alone = torch.tensor([prompt])
        single = prefix_model.generate(alone, attention_mask=torch.ones_like(alone), max_new_tokens=6,
                                       do_sample=False)
        assert single[0, len(prompt):].tolist() == ours[row]


def test_prefix_generate_sampling_eos_list_and_streamer(prefix_model):
    ids, mask = _left_pad(_prompts())
    kwargs = dict(attention_mask=mask, max_new_tokens=5, do_sample=True, temperature=0.9, top_p=0.9, pad_token_id=0)
    torch.manual_seed(3)
    first = prefix_model.generate(ids, **kwargs)
    torch.manual_seed(3)
    assert torch.equal(prefix_model.generate(ids, **kwargs), first)  # seeded sampling is reproducible
    greedy = prefix_model.generate(ids[:1], attention_mask=mask[:1], max_new_tokens=5, do_sample=False)
    stop = int(greedy[0, ids.shape[1] + 1])  # the second generated token becomes a stop id
    stopped = prefix_model.generate(ids[:1], attention_mask=mask[:1], max_new_tokens=5, do_sample=False,
                                    eos_token_id=[299, stop], pad_token_id=0)
    assert stopped[0, ids.shape[1]:].tolist() == greedy[0, ids.shape[1]:ids.shape[1] + 2].tolist()
    streamer = _Collect()
    prefix_model.generate(ids[:1], attention_mask=mask[:1], max_new_tokens=5, do_sample=False, streamer=streamer)
    assert streamer.ended and streamer.tokens[-5:] == greedy[0, ids.shape[1]:].tolist()


def test_prefix_dropout_defaults_to_official_and_is_off_in_eval():
    assert PrefixOptions().prefix_dropout == 0.1  # official modeling_chatglm.py: Dropout(0.1) on the prefix
    model = prepare(load_model("tiny", dtype="fp32", vocab_size=300, seed=0), "ptuning",
                    {"num_virtual_tokens": 4}).model
    assert model.dropout.p == 0.1
    model.train()
    a, b = model.get_prompt(1, torch.float32)[0][0], model.get_prompt(1, torch.float32)[0][0]
    assert not torch.equal(a, b)  # training: dropped differently each time
    model.eval()
    a, b = model.get_prompt(1, torch.float32)[0][0], model.get_prompt(1, torch.float32)[0][0]
    assert torch.equal(a, b)


def test_chat_turn_raises_no_deprecation_warning():
    from test_infer_trained import trained_chatbot

    from glmtune.infer.chat import ChatSession
    from glmtune.infer.sampling import SamplingConfig

    _, model, tok = trained_chatbot()
    session = ChatSession(model, tok, sampling=SamplingConfig(temperature=0, max_new_tokens=8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert session.chat("ping").content == "pong"


class _FakeTok:
    """What generate_batch needs of a tokenizer: left padding with pad id 0, as the official tokenizer."""

    pad_token_id = 0
    stop_ids: list[int] = []

    def pad(self, prompts):
        ids, mask = _left_pad(prompts)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}


class _Collect(BaseStreamer):
    def __init__(self):
        self.tokens: list[int] = []
        self.ended = False

    def put(self, value):
        self.tokens.extend(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


def test_model_in_training_mode_generates_too():
    # What an evaluation callback does in the middle of training: generate without switching to eval mode.
    model = prepare(load_model("tiny", dtype="fp32", vocab_size=300, seed=0), "ptuning",
                    {"num_virtual_tokens": 4, "prefix_dropout": 0.0}).model
    with torch.no_grad():
        model.prefix_encoder.embedding.weight.normal_(0, 2.0)
    ids, mask = _left_pad(_prompts())
    model.train()
    in_training = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert model.training
    model.eval()
    assert torch.equal(in_training, model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                                                   pad_token_id=0))
