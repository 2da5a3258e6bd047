"""P-Tuning v2: official conformance, gradient checkpointing, loading formats, training and save/reload."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY, greedy_ids, need_fixtures, train_steps
from glmtune import load_model
from glmtune.methods import MethodError, PrefixOptions, apply_prefix, load_trained, prepare


def reference():
    need_fixtures()
    return load_file(str(TINY / "reference.safetensors"))


def assert_logits_match(logits: torch.Tensor, ref: dict, prefix: str, keep: torch.Tensor, tol: float = 1e-5):
    assert (logits[..., :512] - ref[f"{prefix}_head"])[keep].abs().max() <= tol
    assert (logits[..., -512:] - ref[f"{prefix}_tail"])[keep].abs().max() <= tol
    assert (logits.logsumexp(-1) - ref[f"{prefix}_logsumexp"])[keep].abs().max() <= tol
    assert torch.equal(logits.argmax(-1)[keep], ref[f"{prefix}_argmax"][keep])


@pytest.fixture(scope="module")
def official_prefix_model():
    need_fixtures()
    return load_model(TINY, dtype="fp32", prefix=TINY / "ptuning")


def test_padded_batch_matches_official(official_prefix_model):
    ref = reference()
    with torch.no_grad():
        logits = official_prefix_model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"],
                                       position_ids=ref["position_ids"]).logits
    assert_logits_match(logits, ref, "ptuning_logits", ref["attention_mask"].bool())


def test_default_position_ids_are_official(official_prefix_model):
    # Without explicit position ids, left-padded rows still get 0 on pads then 0..n-1.
    ref = reference()
    with torch.no_grad():
        logits = official_prefix_model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits
    assert_logits_match(logits, ref, "ptuning_logits", ref["attention_mask"].bool())


def test_single_prompt_and_greedy_match_official(official_prefix_model):
    ref = reference()
    ids = ref["single_input_ids"].reshape(1, -1)
    with torch.no_grad():
        logits = official_prefix_model(input_ids=ids).logits
        tokens = greedy_ids(official_prefix_model, ids)
    assert_logits_match(logits.reshape(ref["ptuning_single_logits_argmax"].shape + (-1,)), ref,
                        "ptuning_single_logits", torch.ones_like(ref["ptuning_single_logits_argmax"], dtype=torch.bool))
    assert tokens.reshape(-1).tolist() == ref["ptuning_greedy_ids"].reshape(-1).tolist()


def test_prefix_changes_the_output(official_prefix_model):
    ref = reference()
    base = load_model(TINY, dtype="fp32")
    ids = ref["single_input_ids"].reshape(1, -1)
    with torch.no_grad():
        diff = (official_prefix_model(input_ids=ids).logits - base(input_ids=ids).logits).abs().max()
    assert diff > 1e-2


def prefix_grads(checkpointing: bool, projection: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = load_model("tiny", dtype="fp32", seed=0)
    prepared = prepare(model, "ptuning", PrefixOptions(num_virtual_tokens=4, prefix_projection=projection))
    if checkpointing:
        prepared.model.activation_checkpointing_enable()
    prepared.model.train()
    ids = torch.tensor([[0, 0, 64790, 64792, 100, 200, 300], [64790, 64792, 11, 12, 13, 14, 15]])
    mask = (ids != 0).long()
    labels = ids.masked_fill(mask == 0, -100)
    loss = prepared.model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    return {n: p.grad.clone() for n, p in prepared.trainable_parameters()}


@pytest.mark.parametrize("projection", [False, True])
def test_gradient_checkpointing_gives_same_gradients(projection):
    plain, checkpointed = prefix_grads(False, projection), prefix_grads(True, projection)
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        assert plain[name].abs().max() > 0, name
        assert (plain[name] - checkpointed[name]).abs().max() <= 1e-6, name


def test_reentrant_checkpointing_is_refused():
    prepared = prepare(load_model("tiny", dtype="fp32"), "ptuning", PrefixOptions(num_virtual_tokens=2))
    with pytest.raises(MethodError, match="non-reentrant"):
        prepared.model.activation_checkpointing_enable({"use_reentrant": True})


def test_training_changes_only_the_prefix_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = load_model("tiny", dtype="fp32", seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prepared = prepare(model, "ptuning", PrefixOptions(num_virtual_tokens=4, prefix_projection=True))
    names = [n for n, _ in prepared.trainable_parameters()]
    assert names and all(n.startswith("prefix_encoder.") for n in names)
    ids = torch.tensor([[64790, 64792, 30, 31, 32, 33, 34, 35]])
    opt = torch.optim.AdamW([p for _, p in prepared.trainable_parameters()], lr=1e-2)
    losses = train_steps(prepared.model, opt, 8, input_ids=ids, labels=ids)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.1
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), f"{name} changed although only the prefix trains"

    files = prepared.save(tmp_path / "out")
    assert sorted(p.name for p in files) == ["config.json", "glmtune_method.json", "prefix_encoder.safetensors"]
    saved = load_file(str(tmp_path / "out" / "prefix_encoder.safetensors"))
    assert "transformer.prefix_encoder.embedding.weight" in saved and "transformer.prefix_encoder.trans.0.weight" in saved
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["pre_seq_len"] == 4 and cfg["prefix_projection"] is True

    prepared.model.eval()
    reloaded = load_trained(load_model("tiny", dtype="fp32", seed=0), tmp_path / "out")
    via_load_model = load_model("tiny", dtype="fp32", seed=0, prefix=tmp_path / "out")
    with torch.no_grad():
        expected = prepared.model(input_ids=ids).logits
        assert torch.equal(reloaded(input_ids=ids).logits, expected)
        assert torch.equal(via_load_model(input_ids=ids).logits, expected)


def test_resume_loads_in_place(tmp_path):
    first = prepare(load_model("tiny", dtype="fp32"), "ptuning", PrefixOptions(num_virtual_tokens=3))
    first.save(tmp_path)
    torch.manual_seed(1)
    second = prepare(load_model("tiny", dtype="fp32"), "ptuning", PrefixOptions(num_virtual_tokens=3))
    param = second.model.prefix_encoder.embedding.weight
    second.load_state(tmp_path)
    assert second.model.prefix_encoder.embedding.weight is param
    assert torch.equal(param, first.model.prefix_encoder.embedding.weight)


def test_loads_bin_prefix_and_whole_official_checkpoint(tmp_path, official_prefix_model):
    ref = reference()
    ids = ref["single_input_ids"].reshape(1, -1)
    weights = load_file(str(TINY / "ptuning" / "prefix_encoder.safetensors"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(TINY / "ptuning" / "config.json", bin_dir / "config.json")
    torch.save(weights, bin_dir / "pytorch_model.bin")
    # A whole official checkpoint folder: the model's config.json plus pre_seq_len, weights with only the prefix.
    whole = tmp_path / "checkpoint-1000"
    whole.mkdir()
    cfg = json.loads((TINY / "config.json").read_text())
    (whole / "config.json").write_text(json.dumps({**cfg, "pre_seq_len": 8, "prefix_projection": False}))
    save_file(weights, str(whole / "model.safetensors"))
    # The same, saved sharded with the whole model: the index points to the shard holding the prefix.
    sharded = tmp_path / "checkpoint-2000"
    sharded.mkdir()
    (sharded / "config.json").write_text((whole / "config.json").read_text())
    index = json.loads((TINY / "model.safetensors.index.json").read_text())
    for shard in set(index["weight_map"].values()):
        shutil.copy(TINY / shard, sharded / shard)
    save_file(weights, str(sharded / "model-prefix.safetensors"))
    index["weight_map"].update(dict.fromkeys(weights, "model-prefix.safetensors"))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with torch.no_grad():
        expected = official_prefix_model(input_ids=ids).logits
        for folder in (bin_dir, whole, sharded):
            model = load_model(TINY, dtype="fp32", prefix=folder)
            assert torch.equal(model(input_ids=ids).logits, expected), folder


def test_prefix_for_another_shape_is_one_clear_error():
    need_fixtures()
    with pytest.raises(MethodError, match=r"prefix_encoder\.safetensors.*different model shape"):
        load_model("small", dtype="fp32", prefix=TINY / "ptuning")


def test_missing_prefix_files_are_clear_errors(tmp_path):
    model = load_model("tiny", dtype="fp32")
    with pytest.raises(MethodError, match="no config.json"):
        apply_prefix(model, tmp_path)
    (tmp_path / "config.json").write_text('{"pre_seq_len": 8}')
    with pytest.raises(MethodError, match="no prefix weights"):
        apply_prefix(model, tmp_path)


def test_batched_cached_decoding_matches_full_forward():
    # Left-padded batch, decoded step by step, equals recomputing everything at each step.
    torch.manual_seed(0)
    prepared = prepare(load_model("tiny", dtype="fp32", seed=0), "ptuning", PrefixOptions(num_virtual_tokens=8))
    model = prepared.model.eval()  # any prefix: the official one is compared with the reference above
    ids = torch.tensor([[0, 0, 0, 64790, 64792, 30, 31, 32], [64790, 64792, 40, 41, 42, 43, 44, 45]])
    mask = (torch.arange(8) >= torch.tensor([[3], [0]])).long()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        step_mask = torch.cat([mask, torch.ones_like(token)], dim=-1)
        step = model(input_ids=token, attention_mask=step_mask,
                     past_key_values=out.past_key_values, use_cache=True).logits[:, -1]
        full = model(input_ids=torch.cat([ids, token], -1), attention_mask=step_mask).logits[:, -1]
    assert (step - full).abs().max() <= 1e-5


def test_official_ptuning_checkpoint_folder_is_base_and_prefix(tmp_path, chatglm3_dir):
    """A folder with base weights + prefix encoder (pre_seq_len in config.json) loads as base, and as --prefix."""
    import warnings

    from glmtune.export import export_model
    from glmtune.infer.loading import load_for_inference

    prepared = prepare(load_model(chatglm3_dir, dtype="fp32"), "ptuning", {"num_virtual_tokens": 4})
    with torch.no_grad():
        for _, param in prepared.trainable_parameters():
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)))
    prepared.save(tmp_path / "pt")
    ckpt = export_model(chatglm3_dir, tmp_path / "ckpt", adapter=tmp_path / "pt", layout="chatglm3",
                        dtype="fp32").out_dir
    ids = torch.tensor([[5, 17, 42, 99, 256, 511, 7, 1000]])
    with torch.no_grad():
        base = load_model(chatglm3_dir, dtype="fp32")(input_ids=ids).logits
        tuned = load_model(chatglm3_dir, dtype="fp32", prefix=tmp_path / "pt")(input_ids=ids).logits
        with pytest.warns(UserWarning, match=r"holds a P-Tuning v2 prefix \(pre_seq_len 4.*--prefix .*ckpt"):
            plain = load_model(ckpt, dtype="fp32")
        assert torch.equal(plain(input_ids=ids).logits, base)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # given the prefix, nothing to say
            model, _ = load_for_inference(ckpt, prefix=ckpt, dtype="fp32", device="cpu")
        assert (tuned - base).abs().max() > 1e-3
        assert torch.equal(model(input_ids=ids).logits, tuned)
