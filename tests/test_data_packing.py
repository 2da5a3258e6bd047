"""Packing: a packed row gives each sample the logits and loss it has alone; collators pad/pack correctly."""

from __future__ import annotations

import pytest
import torch

from glmtune.data import DataConfig, PackedCollator, PackedDataset, PaddedCollator, make_collator, pack
from glmtune.data.dataset import EncodedDataset
from glmtune.models.packed_attention import NAME as PER_SAMPLE, enable_packed_attention, segment_bounds

# transformers' sdpa (a dense block-diagonal mask) and glmtune's per-sample attention: both must keep samples apart.
ATTENTION = pytest.mark.parametrize("attention", ["sdpa", PER_SAMPLE])


def _use(model, attention: str):
    if attention == PER_SAMPLE:
        enable_packed_attention(model)
        assert model.config._attn_implementation == PER_SAMPLE
    return model


def _samples():
    g = torch.Generator().manual_seed(0)
    out = []
    for n, cut in ((7, 3), (11, 5), (5, 2)):
        ids = torch.randint(3, 60000, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return out


@ATTENTION
def test_packed_row_equals_each_sample_alone(tiny_model, attention):
    model = _use(tiny_model, attention)
    assert model.config.use_cache  # the default that would silently disable packed masking
    samples = _samples()
    batch = PackedCollator()(samples)
    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, 23)
    assert batch["position_ids"][0].tolist() == list(range(7)) + list(range(11)) + list(range(5))
    with torch.no_grad():
        packed = model(**batch)
        start, total_loss, total_tokens = 0, 0.0, 0
        for s in samples:
            n = len(s["input_ids"])
            alone = model(input_ids=torch.tensor([s["input_ids"]]), labels=torch.tensor([s["labels"]]))
            assert torch.allclose(packed.logits[0, start:start + n], alone.logits[0], atol=1e-5, rtol=0)
            learned = sum(t != -100 for t in s["labels"][1:])
            total_loss += alone.loss.item() * learned
            total_tokens += learned
            start += n
    assert abs(packed.loss.item() - total_loss / total_tokens) < 1e-5
    # Without the restart of positions (one long sequence) the logits differ: the test has teeth.
    with torch.no_grad():
        flat = model(input_ids=batch["input_ids"], use_cache=False)
    assert not torch.allclose(flat.logits[0, 7:18], packed.logits[0, 7:18], atol=1e-3)


@ATTENTION
def test_packed_rows_are_stacked_and_each_sample_matches_alone(tiny_model, attention):
    _use(tiny_model, attention)
    samples = _samples()
    ds = EncodedDataset.from_samples((s["input_ids"], s["labels"]) for s in samples)
    rows = PackedDataset(ds, max_length=16)
    assert sorted(i for r in rows.rows for i in r) == [0, 1, 2]
    assert all(len(rows[i]["input_ids"]) <= 16 for i in range(len(rows)))
    batch = PackedCollator()([rows[i] for i in range(len(rows))])
    # One row per packed row (attention cost of a row, not of the whole batch), pad tail numbered apart.
    width = max(len(rows[i]["input_ids"]) for i in range(len(rows)))
    assert batch["input_ids"].shape == (len(rows), width) and "attention_mask" not in batch
    with torch.no_grad():
        out = tiny_model(**batch)
        for r, members in enumerate(rows.rows):
            start = 0
            for j in members:
                n = len(samples[j]["input_ids"])
                alone = tiny_model(input_ids=torch.tensor([samples[j]["input_ids"]])).logits[0]
                assert torch.allclose(out.logits[r, start:start + n], alone, atol=1e-5, rtol=0)
                start += n
            tail = batch["position_ids"][r, start:].tolist()
            assert tail == list(range(width - start)) and batch["labels"][r, start:].eq(-100).all()
    assert torch.isfinite(out.loss)


def test_pack_best_fit():
    rows = pack([5, 9, 3, 7, 1, 20], 10)
    assert sorted(i for r in rows for i in r) == list(range(6))
    lengths = [5, 9, 3, 7, 1, 20]
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows if r != [5])
    assert len(rows) == 4  # [9,1] [7,3] [5] [20]


def test_padded_collator_right_pads_and_masks_labels(tiny_model):
    samples = _samples()
    batch = PaddedCollator()(samples)
    assert batch["input_ids"].shape == (3, 11)
    assert batch["labels"][0, 7:].eq(-100).all() and batch["input_ids"][0, 7:].eq(0).all()
    assert batch["attention_mask"].sum(1).tolist() == [7, 11, 5]
    with torch.no_grad():
        out = tiny_model(**batch)
        alone = tiny_model(input_ids=torch.tensor([samples[0]["input_ids"]]))
    assert torch.allclose(out.logits[0, :7], alone.logits[0], atol=1e-5)


def test_make_collator_follows_config():
    # Packed by default (a row length is known: input + output + 1), padded one option away.
    assert DataConfig().packs and DataConfig().row_length == 1025
    assert isinstance(make_collator(DataConfig()), PackedCollator)
    assert isinstance(make_collator(DataConfig(packing=False)), PaddedCollator)
    assert isinstance(make_collator(DataConfig(packing=True, max_seq_length=64)), PackedCollator)
    # No row length: the default falls back to padding (an explicit packing=true is refused at config time).
    no_length = DataConfig(max_input_length=None, max_output_length=None)
    assert not no_length.packs and isinstance(make_collator(no_length), PaddedCollator)
    with pytest.raises(Exception, match="data.packing needs a row length"):
        DataConfig(packing=True, max_input_length=None, max_output_length=None)


def test_data_report_says_how_batches_are_formed(tmp_path, tokenizer):
    import json

    from glmtune.data import prepare_splits

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"conversations": [{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": "hello"}]}) + "\n")
    default = prepare_splits(DataConfig(train_file=str(path), cache=False), tokenizer).report.format()
    assert "packed rows of 1025 tokens" in default and "data.packing=false" in default
    padded = prepare_splits(DataConfig(train_file=str(path), cache=False, packing=False), tokenizer).report.format()
    assert "right-padded" in padded and "packed rows" not in padded


def test_packing_end_to_end_from_config(tmp_path, tokenizer, tiny_model):
    import json

    from glmtune.data import prepare_splits, training_dataset

    convs = [{"conversations": [{"role": "user", "content": f"question {i}"},
                                {"role": "assistant", "content": "answer " * (i + 1)}]} for i in range(5)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in convs))
    cfg = DataConfig(train_file=str(path), packing=True, max_seq_length=64, cache=False)
    splits = prepare_splits(cfg, tokenizer)
    rows = training_dataset(splits.train, cfg)
    assert len(rows) < len(splits.train) and all(len(rows[i]["input_ids"]) <= 64 for i in range(len(rows)))
    batch = make_collator(cfg)([rows[i] for i in range(len(rows))])
    with torch.no_grad():
        packed = tiny_model(**batch).loss.item()
        total = count = 0
        for s in splits.train:
            learned = sum(t != -100 for t in s["labels"][1:])
            total += tiny_model(input_ids=torch.tensor([s["input_ids"]]),
                                labels=torch.tensor([s["labels"]])).loss.item() * learned
            count += learned
    assert abs(packed - total / count) < 1e-5


@ATTENTION
def test_packed_row_with_ptuning_prefix_equals_each_sample_alone(tiny_model, attention):
    """P-Tuning builds its own mask: packed rows must still not attend across samples."""
    from glmtune.methods import prepare

    model = _use(prepare(tiny_model, "ptuning", {"num_virtual_tokens": 4}).model.eval(), attention)
    samples = _samples()
    batch = PackedCollator()(samples)
    with torch.no_grad():
        packed = model(**batch).logits[0]
        start = 0
        for s in samples:
            n = len(s["input_ids"])
            alone = model(input_ids=torch.tensor([s["input_ids"]])).logits[0]
            assert torch.allclose(packed[start:start + n], alone, atol=1e-5, rtol=0)
            start += n


def test_per_sample_attention_builds_no_mask_and_runs_causal_per_sample(tiny_model, monkeypatch):
    """The packed path: no dense mask reaches SDPA; one is_causal call per sample span of each row."""
    enable_packed_attention(tiny_model)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append((q.shape[2], attn_mask, kwargs.get("is_causal")))
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    batch = PackedCollator()(_samples())
    with torch.no_grad():
        tiny_model(**batch)
    layers = tiny_model.config.num_hidden_layers
    assert sorted(c[0] for c in calls) == sorted([7, 11, 5] * layers)
    assert all(mask is None and causal for _, mask, causal in calls)
    # A padded batch still gets transformers' own sdpa mask (one call per layer, a mask given).
    calls.clear()
    with torch.no_grad():
        tiny_model(**PaddedCollator()(_samples()))
    assert len(calls) == layers and all(mask is not None for _, mask, _ in calls)


def test_per_sample_attention_gradients_equal_padded(tiny_model):
    """Training through the packed path gives each sample the gradient it has in a padded batch."""
    from glmtune.train.loss import answer_only_loss, find_lm_head

    samples = _samples()

    def grads(batch):
        tiny_model.zero_grad()
        answer_only_loss(tiny_model, find_lm_head(tiny_model), batch).backward()
        return {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}

    padded = PaddedCollator()(samples)
    padded["labels"][:, 0] = -100  # a packed sample never learns its first token (nothing precedes it)
    tiny_model.train()
    reference = grads(padded)
    enable_packed_attention(tiny_model)
    packed = grads(PackedCollator()(samples))
    assert reference.keys() == packed.keys()
    for name, g in reference.items():
        assert torch.allclose(g, packed[name], atol=1e-5, rtol=1e-4), name


def test_segment_bounds():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert segment_bounds(pos) == [[(0, 3), (3, 5), (5, 6)], [(0, 6)]]


def test_per_sample_attention_follows_new_positions_in_the_same_tensor(tiny_model):
    """Bounds are cached per position_ids tensor; an in-place change of that tensor is seen."""
    enable_packed_attention(tiny_model)
    samples = _samples()
    batch = PackedCollator()(samples)
    with torch.no_grad():
        tiny_model(**batch)
        batch["position_ids"].copy_(torch.arange(23)[None])  # now one sequence: no sample boundaries
        flat = tiny_model(**batch).logits
        reference = tiny_model(input_ids=batch["input_ids"], use_cache=False).logits
    assert torch.allclose(flat, reference, atol=1e-5, rtol=0)
