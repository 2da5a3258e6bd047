"""LoRA: official adapters reproduce the official outputs, merge, train, save/reload, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, greedy_ids, need_fixtures, train_steps
from glmtune import load_model
from glmtune.methods import LoraOptions, MethodError, load_trained, merge_adapter, prepare
from glmtune.methods.ptuning import PrefixModel

IDS = torch.tensor([[64790, 64792, 30, 31, 32, 33, 34, 35, 36]])


def lora_reference() -> tuple[dict, dict]:
    need_fixtures()
    return load_file(str(TINY / "reference.safetensors")), load_file(str(TINY / "reference_lora.safetensors"))


@pytest.fixture(scope="module")
def official_lora_model():
    need_fixtures()
    return load_model(TINY, dtype="fp32", adapter=TINY / "lora-official")


def check_single(logits: torch.Tensor, lora: dict, tol: float = 1e-5) -> None:
    logits = logits.reshape(lora["lora_single_logits_argmax"].shape + (-1,))
    assert (logits[..., :512] - lora["lora_single_logits_head"]).abs().max() <= tol
    assert (logits[..., -512:] - lora["lora_single_logits_tail"]).abs().max() <= tol
    assert (logits.logsumexp(-1) - lora["lora_single_logits_logsumexp"]).abs().max() <= tol
    assert torch.equal(logits.argmax(-1), lora["lora_single_logits_argmax"])


def test_official_adapter_reproduces_official_outputs(official_lora_model):
    ref, lora = lora_reference()
    ids = ref["single_input_ids"].reshape(1, -1)
    with torch.no_grad():
        check_single(official_lora_model(input_ids=ids).logits, lora)
        tokens = greedy_ids(official_lora_model, ids)
        assert tokens.reshape(-1).tolist() == lora["lora_greedy_ids"].reshape(-1).tolist()
    # The adapter really acts: without it the logits differ.
    with torch.no_grad():
        base_logits = load_model(TINY, dtype="fp32")(input_ids=ids).logits
    assert (base_logits.reshape(-1)[:512] - official_lora_model(input_ids=ids).logits.reshape(-1)[:512]).abs().max() > 1e-4


def test_official_adapter_merged_matches_reference():
    ref, lora = lora_reference()
    ids = ref["single_input_ids"].reshape(1, -1)
    merged = merge_adapter(load_model(TINY, dtype="fp32", adapter=TINY / "lora-official"))
    assert type(merged).__name__ == "GlmForCausalLM"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        check_single(merged(input_ids=ids).logits, lora)


def test_adapter_base_path_is_ignored_and_override_recorded(tmp_path):
    need_fixtures()
    folder = tmp_path / "moved"
    shutil.copytree(TINY / "lora-official", folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "/home/someone/gone/chatglm3-6b"
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    from glmtune.methods import apply_adapter

    model = apply_adapter(load_model(TINY, dtype="fp32"), folder, base_path_override=str(TINY))
    assert model.peft_config["default"].base_model_name_or_path == str(TINY)


def run_steps(model, params, steps: int = 6) -> list[float]:
    return train_steps(model, torch.optim.AdamW(params, lr=2e-2), steps, input_ids=IDS, labels=IDS)


@pytest.mark.parametrize("options", [
    LoraOptions(r=4, alpha=16, dropout=0.0),
    LoraOptions(r=4, target="all-linear", use_rslora=True, dropout=0.0),
    LoraOptions(r=2, target="attention", use_dora=True, dropout=0.0),
])
def test_lora_trains_only_adapters_and_reloads(tmp_path, options):
    model = load_model("tiny", dtype="fp32", seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prepared = prepare(model, "lora", options)
    trainable = [n for n, _ in prepared.trainable_parameters()]
    assert trainable and all("lora_" in n for n in trainable)
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert targets == set(options.target_modules())
    losses = run_steps(prepared.model, [p for _, p in prepared.trainable_parameters()])
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.1
    for name, param in prepared.model.get_base_model().named_parameters():
        clean = name.replace(".base_layer", "")
        if "lora_" not in name:
            assert torch.equal(param, before[clean]), f"{name} changed"

    files = prepared.save(tmp_path / "adapter")
    assert {p.name for p in files} == {"adapter_config.json", "adapter_model.safetensors", "glmtune_method.json"}
    with torch.no_grad():
        expected = prepared.model(input_ids=IDS).logits
        reloaded = load_trained(load_model("tiny", dtype="fp32", seed=0), tmp_path / "adapter")
        assert (reloaded(input_ids=IDS).logits - expected).abs().max() <= 1e-6
        merged = merge_adapter(reloaded)
        assert (merged(input_ids=IDS).logits - expected).abs().max() <= 1e-5


def test_lora_resume_loads_in_place(tmp_path):
    first = prepare(load_model("tiny", dtype="fp32"), "lora", {"r": 2})
    run_steps(first.model, [p for _, p in first.trainable_parameters()], steps=2)
    first.save(tmp_path)
    second = prepare(load_model("tiny", dtype="fp32"), "lora", {"r": 2})
    params = dict(second.trainable_parameters())
    second.load_state(tmp_path)
    for name, param in second.trainable_parameters():
        assert param is params[name]
        assert torch.equal(param, dict(first.trainable_parameters())[name])


def test_official_target_names_map_to_native():
    prepared = prepare(load_model("tiny", dtype="fp32"), "lora", LoraOptions(target=["query_key_value", "dense"]))
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in prepared.trainable_parameters()}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_unknown_target_lists_available_modules():
    with pytest.raises(MethodError, match="available: q_proj, k_proj, v_proj, o_proj, gate_up_proj, down_proj"):
        prepare(load_model("tiny", dtype="fp32"), "lora", LoraOptions(target=["qkv_proj"]))


def test_missing_adapter_files_are_clear_errors(tmp_path):
    model = load_model("tiny", dtype="fp32")
    from glmtune.methods import apply_adapter

    with pytest.raises(MethodError, match="adapter folder not found"):
        apply_adapter(model, tmp_path / "nope")
    with pytest.raises(MethodError, match=r"adapter_config\.json: file not found"):
        apply_adapter(model, tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}')
    with pytest.raises(MethodError, match=r"adapter weights missing \(expected adapter_model\.safetensors"):
        apply_adapter(model, tmp_path)


def test_adapter_for_another_shape_names_the_file():
    need_fixtures()
    with pytest.raises(MethodError, match=r"adapter_model\.safetensors.*different base model shape"):
        load_model("small", dtype="fp32", adapter=TINY / "lora-official")


def test_prefix_model_cannot_be_merged():
    model = PrefixModel(load_model("tiny", dtype="fp32"), __import__("glmtune.methods", fromlist=["x"]).PrefixOptions(2))
    with pytest.raises(MethodError, match="cannot be merged.*--prefix"):
        merge_adapter(model)


def test_lora_prepare_save_and_load_are_quiet_and_record_the_base_path(tmp_path, chatglm3_dir):
    """No PEFT rename warning or transformers deprecation on every run; the adapter names its base model."""
    import warnings

    from glmtune import load_model
    from glmtune.methods import prepare

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare(load_model(chatglm3_dir, dtype="fp32"), "lora", {"r": 2}).save(tmp_path / "a")
        load_model(chatglm3_dir, dtype="fp32", adapter=tmp_path / "a")
        load_model("tiny", dtype="fp32", adapter=tmp_path / "a")  # a named shape has no path: None, quietly
    noisy = [str(w.message) for w in caught if "base_model_name_or_path" in str(w.message)
             or "checkpointing" in str(w.message)]
    assert noisy == []
    recorded = json.loads((tmp_path / "a" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(chatglm3_dir)
