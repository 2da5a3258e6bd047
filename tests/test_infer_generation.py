"""The generation loop against the official ChatGLM3 reference outputs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, need_fixtures
from glmtune import load_model
from glmtune.infer import generate_batch, generate_stream
from glmtune.infer.sampling import SamplingConfig, next_tokens, top_p_filter


@pytest.fixture(scope="module")
def reference():
    need_fixtures()
    return load_file(str(TINY / "reference.safetensors"))


@pytest.fixture(scope="module")
def official(reference):
    return load_model(TINY, dtype="fp32")


def test_batch_reproduces_official_greedy_ids(official, tokenizer, reference):
    prompt = reference["single_input_ids"][0].tolist()
    out = generate_batch(official, tokenizer, [prompt], max_new_tokens=16, stop_ids=())
    assert out == [reference["greedy_ids"].tolist()]


def test_stream_reproduces_official_greedy_ids(official, reference):
    prompt = reference["single_input_ids"][0].tolist()
    assert list(generate_stream(official, prompt, max_new_tokens=16)) == reference["greedy_ids"].tolist()


def test_left_padded_rows_match_rows_alone(official, tokenizer, reference):
    ids, mask = reference["input_ids"], reference["attention_mask"]
    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    # A third, much shorter prompt makes the padding wide.
    prompts.append(prompts[1][:4])
    batch = generate_batch(official, tokenizer, prompts, max_new_tokens=12, stop_ids=())
    alone = [generate_batch(official, tokenizer, [p], max_new_tokens=12, stop_ids=())[0] for p in prompts]
    assert batch == alone
    assert batch[1] == reference["greedy_ids"][:12].tolist()


def test_stop_token_ends_each_row_separately(official, tokenizer, reference):
    prompt = reference["single_input_ids"][0].tolist()
    greedy = reference["greedy_ids"].tolist()
    other = reference["input_ids"][0].tolist()
    # Declare the 5th greedy token a stop token: the first row ends before it,
    # the other row is unaffected unless it produces that token itself.
    stop = greedy[4]
    out = generate_batch(official, tokenizer, [prompt, other], max_new_tokens=16, stop_ids=[stop])
    assert out[0] == greedy[:4]
    free = generate_batch(official, tokenizer, [other], max_new_tokens=16, stop_ids=())[0]
    expected = free[: free.index(stop)] if stop in free else free
    assert out[1] == expected
    assert list(generate_stream(official, prompt, max_new_tokens=16, stop_ids=[stop])) == greedy[:4]


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(official, reference):
    prompt = reference["single_input_ids"][0].tolist()
    a = list(generate_stream(official, prompt, max_new_tokens=10, temperature=1.0, seed=7))
    b = list(generate_stream(official, prompt, max_new_tokens=10, temperature=1.0, seed=7))
    assert a == b and len(a) == 10
    assert a != reference["greedy_ids"][:10].tolist()


def test_generation_restores_training_mode(tiny_model, tokenizer):
    tiny_model.train()
    generate_batch(tiny_model, tokenizer, [[64790, 64792, 64795]], max_new_tokens=2)
    assert tiny_model.training


def test_top_p_keeps_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_p_filter(logits, 0.8))
    assert kept.tolist() == [[True, True, False, False]]
    # The most likely token survives even a tiny p.
    assert torch.isfinite(top_p_filter(logits, 0.01)).tolist() == [[True, False, False, False]]


def test_top_k_one_is_greedy():
    logits = torch.randn(3, 50)
    g = torch.Generator().manual_seed(0)
    picked = next_tokens(logits, SamplingConfig(temperature=1.0, top_k=1, top_p=1.0), g)
    assert picked.tolist() == logits.argmax(-1).tolist()


def test_empty_prompt_is_refused(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate_batch(tiny_model, tokenizer, [[1, 2], []], max_new_tokens=1)


def test_official_lora_adapter_reproduces_reference(tokenizer):
    need_fixtures()
    ref = load_file(str(TINY / "reference_lora.safetensors"))
    prompt = load_file(str(TINY / "reference.safetensors"))["single_input_ids"][0].tolist()
    model = load_model(TINY, dtype="fp32", adapter=TINY / "lora-official")
    assert list(generate_stream(model, prompt, max_new_tokens=16)) == ref["lora_greedy_ids"].tolist()
    batch = generate_batch(model, tokenizer, [prompt, prompt[:5]], max_new_tokens=16, stop_ids=())
    assert batch[0] == ref["lora_greedy_ids"].tolist()


def test_ptuning_prefix_reproduces_reference(tokenizer, reference):
    prompt = reference["single_input_ids"][0].tolist()
    model = load_model(TINY, dtype="fp32", prefix=TINY / "ptuning")
    expected = reference["ptuning_greedy_ids"].tolist()
    assert list(generate_stream(model, prompt, max_new_tokens=16)) == expected
    # Left padding with a prefix: the row must not see the pads, only the prefix and its own tokens.
    other = reference["input_ids"][0].tolist()
    batch = generate_batch(model, tokenizer, [other, prompt], max_new_tokens=16, stop_ids=())
    assert batch[1] == expected
