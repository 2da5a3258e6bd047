"""Method registry, options checks, freeze and full fine-tuning, loss normalisation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import train_steps
from glmtune import load_model
from glmtune.methods import (
    METHODS,
    FreezeOptions,
    LoraOptions,
    MethodError,
    PrefixOptions,
    load_trained,
    make_options,
    prepare,
    trainable_parameter_counts,
)

IDS = torch.tensor([[64790, 64792, 30, 31, 32, 33, 34, 35, 36], [0, 0, 64790, 64792, 40, 41, 42, 43, 44]])
MASK = (IDS != 0).long()
LABELS = IDS.masked_fill(MASK == 0, -100)


def test_unknown_method_lists_known_ones():
    with pytest.raises(MethodError, match="unknown fine-tuning method 'qlora'; .*known methods: lora, ptuning, freeze, full"):
        prepare(load_model("tiny", dtype="fp32"), "qlora")


def test_unknown_option_suggests_the_closest():
    with pytest.raises(MethodError, match=r"'rank' .*valid options: r, alpha"):
        make_options("lora", {"rank": 8})
    with pytest.raises(MethodError, match=r"'pre_seq_len' \(did you mean 'num_virtual_tokens'"):
        make_options("ptuning", {"pre_seq_len": 8})
    with pytest.raises(MethodError, match=r"'prefix_projecton' \(did you mean 'prefix_projection'"):
        make_options("ptuning", {"prefix_projecton": True})


@pytest.mark.parametrize("build, message", [
    (lambda: LoraOptions(r=0), "lora.r"),
    (lambda: LoraOptions(dropout=1.5), "lora.dropout"),
    (lambda: LoraOptions(target="everything"), "unknown target 'everything'"),
    (lambda: PrefixOptions(num_virtual_tokens=0), "num_virtual_tokens"),
    (lambda: PrefixOptions(prefix_hidden_size=64), "applies only with prefix_projection"),
    (lambda: FreezeOptions(trainable_layers=0), "freeze.trainable_layers"),
])
def test_bad_options_are_clear_errors(build, message):
    with pytest.raises(MethodError, match=message):
        build()


def test_defaults_follow_the_official_demo():
    lora, prefix = make_options("lora"), make_options("ptuning")
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules()) == (8, 32, 0.1, ["q_proj", "k_proj", "v_proj"])
    assert (prefix.num_virtual_tokens, prefix.prefix_projection) == (128, False)
    assert set(METHODS) == {"lora", "ptuning", "freeze", "full"}


def run_steps(model, steps: int = 5) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    return train_steps(model, torch.optim.SGD(params, lr=0.5), steps, input_ids=IDS, attention_mask=MASK,
                       labels=LABELS)


@pytest.mark.parametrize("options, trained", [
    (FreezeOptions(trainable_layers=1), lambda n: n.startswith("model.layers.1.")),
    (FreezeOptions(trainable_layers=-1), lambda n: n.startswith("model.layers.0.")),
    (FreezeOptions(trainable_modules=["model.layers.*.mlp", "model.norm"]),
     lambda n: ".mlp." in n or n == "model.norm.weight"),
])
def test_freeze_trains_only_chosen_parameters_and_reloads(tmp_path, options, trained):
    model = load_model("tiny", dtype="fp32", seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prepared = prepare(model, "freeze", options)
    names = {n for n, _ in prepared.trainable_parameters()}
    assert names == {n for n in before if trained(n)}
    losses = run_steps(prepared.model)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) != (name in names), name
    files = prepared.save(tmp_path)
    assert {p.name for p in files} == {"trained_weights.safetensors", "glmtune_method.json"}
    assert json.loads((tmp_path / "glmtune_method.json").read_text())["method"] == "freeze"
    assert set(load_file(str(tmp_path / "trained_weights.safetensors"))) == names  # only what trains
    reloaded = load_trained(load_model("tiny", dtype="fp32", seed=0), tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=IDS, attention_mask=MASK).logits,
                           prepared.model(input_ids=IDS, attention_mask=MASK).logits)


def test_freeze_pattern_that_matches_nothing():
    with pytest.raises(MethodError, match="pattern 'encoder.*' matches no parameter"):
        prepare(load_model("tiny", dtype="fp32"), "freeze", FreezeOptions(trainable_modules=["encoder.*"]))


def test_full_trains_everything_and_reloads(tmp_path):
    model = load_model("tiny", dtype="fp32", seed=0)
    prepared = prepare(model, "full")
    trainable, total = trainable_parameter_counts(prepared.model)
    assert trainable == total > 0
    losses = run_steps(prepared.model, steps=3)
    assert losses[-1] < losses[0]
    prepared.save(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "glmtune_method.json").is_file()
    with torch.no_grad():
        expected = prepared.model(input_ids=IDS, attention_mask=MASK).logits
        assert torch.equal(load_trained(load_model("tiny", dtype="fp32", seed=1), tmp_path)(
            input_ids=IDS, attention_mask=MASK).logits, expected)
        assert torch.equal(load_model(tmp_path, dtype="fp32")(input_ids=IDS, attention_mask=MASK).logits, expected)


@pytest.mark.parametrize("method, options", [("lora", {"r": 2}), ("ptuning", {"num_virtual_tokens": 2}),
                                             ("freeze", None), ("full", None)])
def test_loss_honours_num_items_in_batch(method, options):
    # The HF Trainer sums token losses over accumulated micro-batches and divides by the total count.
    prepared = prepare(load_model("tiny", dtype="fp32"), method, options)
    prepared.model.eval()
    with torch.no_grad():
        mean = prepared.model(input_ids=IDS, attention_mask=MASK, labels=LABELS).loss
        summed = prepared.model(input_ids=IDS, attention_mask=MASK, labels=LABELS,
                                num_items_in_batch=torch.tensor(100)).loss
    count = int((LABELS[:, 1:] != -100).sum())
    assert torch.allclose(summed * 100, mean * count, rtol=1e-5)


def test_parameter_counts_for_lora():
    prepared = prepare(load_model("tiny", dtype="fp32"), "lora", LoraOptions(r=4))
    trainable, total = trainable_parameter_counts(prepared.model)
    # q: 32->32, k: 32->16, v: 32->16 per layer; A is r x 32, B is out x r.
    assert trainable == 2 * (3 * 4 * 32 + 4 * (32 + 16 + 16))
    assert total > trainable


def test_load_trained_rejects_unknown_folders(tmp_path):
    with pytest.raises(MethodError, match="not a fine-tuning result"):
        load_trained(load_model("tiny", dtype="fp32"), tmp_path)


def test_one_registry_drives_config_aliases_and_loading(tmp_path):
    """Config sections, help, aliases and load_trained all come from METHODS; nothing lists methods again."""
    import dataclasses
    import subprocess
    import sys

    from glmtune.config.schema import METHOD_ALIASES, METHOD_SECTIONS, MethodConfig
    from glmtune.methods import Method, get_method

    sections = {f.name: f for f in dataclasses.fields(MethodConfig)}
    assert list(sections) == ["name", *METHODS]
    for name, method in METHODS.items():
        assert isinstance(method, Method) and method.section == name == METHOD_SECTIONS[name]
        assert sections[name].type is method.options_type and sections[name].metadata["help"] == method.help
        for alias in method.aliases:
            assert METHOD_ALIASES[alias] == name and get_method(alias) is method
            assert MethodConfig(name=alias).name == name
    assert MethodConfig(name="p-tuning", ptuning=PrefixOptions(4)).options == PrefixOptions(4)
    with pytest.raises(Exception, match="method.lora is set but method.name is 'full'"):
        MethodConfig(name="full", lora=LoraOptions(r=4))
    # prepare() records the method's own name for an alias, so the result reloads through the registry.
    prepared = prepare(load_model("tiny", dtype="fp32", seed=0), "sft")
    assert prepared.method == "full"
    prepared = prepare(load_model("tiny", dtype="fp32", seed=0), "prefix", {"num_virtual_tokens": 2})
    prepared.save(tmp_path)
    assert json.loads((tmp_path / "glmtune_method.json").read_text())["method"] == "ptuning"
    assert type(load_trained(load_model("tiny", dtype="fp32", seed=0), tmp_path)).__name__ == "PrefixModel"
    # The registry and the config schema import no torch (help-config stays fast).
    code = ("import sys, glmtune.config.schema, glmtune.methods.catalog; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_unknown_method_name_gets_the_closest_name_hint():
    from glmtune.config import ConfigError, load_config
    from glmtune.methods import MethodError, get_method

    with pytest.raises(MethodError, match=r"'ptunig'; did you mean 'ptuning'\? known methods: lora, ptuning"):
        get_method("ptunig")
    with pytest.raises(ConfigError, match=r"method.name 'lorra' is unknown; did you mean 'lora'\?"):
        load_config({"model": {"path": "tiny"}}, ["method.name=lorra"], check_files=False)
