"""QLoRA (model.quantization): a 4-bit NF4 or 8-bit base trains LoRA / P-Tuning; the result is an ordinary
adapter for the full-precision base; full/freeze are refused before anything loads; memory savers run.

Quantization error, measured on the tiny workspace model (hidden 128) and stated: the largest logit
difference between the full-precision and the quantized base. The adapter trained on the quantized base,
applied to the full-precision base, must differ from the quantized training model by no more than that
error (x2.5: the adapter was fitted to the quantized layers' outputs, so their error propagates through it;
measured with these settings, max |logit difference|: 4-bit NF4 base 0.144, adapted 0.239; 8-bit base 0.014,
adapted 0.016), while the adapter itself moves the logits by much more (> 5x that difference).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

import glmtune
from glmtune.cli import main
from glmtune.config import ConfigError, load_config
from glmtune.infer.chat import ChatSession
from glmtune.infer.sampling import SamplingConfig
from glmtune.methods.quantize import quantize_model
from glmtune.models import load_model as load_base
from glmtune.train import run_training
from glmtune.train.layout import LOG_FILE

pytest.importorskip("bitsandbytes")


def _config(ws, out, bits, method="lora", **training):
    m = {"name": method}
    if method == "lora":
        m["lora"] = {"r": 16, "alpha": 32, "dropout": 0.0, "target": "all-linear"}
    else:
        m["ptuning"] = {"num_virtual_tokens": 8, "prefix_dropout": 0.0}
    return {
        "model": {"path": str(ws["model"]), "quantization": {"bits": bits}},
        "data": {"train_file": str(ws["data"]), "max_input_length": 32, "max_output_length": 48,
                 "max_samples": 8},
        "method": m,
        "training": {"learning_rate": 1e-2, "lr_scheduler": "constant", "max_steps": 8, "batch_size": 8,
                     "logging_steps": 2, "save_steps": 0, **training},
        "evaluation": {"strategy": "no", "generate": False},
        "output": {"dir": str(out), "plots": False},
    }


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / LOG_FILE).read_text().splitlines() if '"loss"' in line]


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits.float()


@pytest.fixture(scope="module")
def ws(tiny_workspace):
    data = tiny_workspace["out"] / "data"
    return {**tiny_workspace, "data": next(data.glob("*.json*"))}


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_an_adapter_for_the_full_precision_base(ws, tmp_path, bits, capsys):
    out = tmp_path / f"qlora{bits}"
    result = run_training(load_config(_config(ws, out, bits)), quiet=True)
    losses = _losses(out)
    assert losses[-1] < losses[0] - 0.5, losses  # clearly falls

    # Only adapter weights: the saved file holds LoRA matrices alone, and the quantized base is untouched.
    with safe_open(result.final_dir / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    trained = result.model
    fresh = quantize_model(load_base(ws["model"]), bits=bits)
    state = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
             for k, v in trained.state_dict().items() if "lora_" not in k}
    for name, value in fresh.state_dict().items():
        assert torch.equal(state[name], value), name

    # Reload on the full-precision base: the same logits as the quantized training model, up to the quantization
    # error of the base itself.
    ids = torch.tensor([[5, 17, 99, 230, 41, 7, 300, 12, 64, 150]])
    full_base = load_base(ws["model"])
    quant_error = (_logits(full_base, ids) - _logits(fresh, ids)).abs().max().item()
    reloaded = glmtune.load_model(ws["model"], adapter=result.final_dir)
    difference = (_logits(reloaded, ids) - _logits(trained, ids)).abs().max().item()
    adapter_effect = (_logits(reloaded, ids) - _logits(full_base, ids)).abs().max().item()
    print(f"{bits}-bit: quantization error {quant_error:.4f}, reloaded vs trained {difference:.4f}, "
          f"adapter effect {adapter_effect:.3f}")
    assert 0 < quant_error < (0.5 if bits == 4 else 0.1)
    assert difference <= 2.5 * quant_error
    assert adapter_effect > 5 * difference

    # Answering on a quantized base too (load_model(quantization=), --quantize): the layers it trained on, so the
    # trained model's logits; `glmtune chat --quantize` gives that model's greedy reply.
    quantized = glmtune.load_model(ws["model"], adapter=result.final_dir, quantization=bits)
    torch.testing.assert_close(_logits(quantized, ids), _logits(trained, ids), atol=1e-4, rtol=1e-4)
    capsys.readouterr()
    assert main(["chat", "--model", str(ws["model"]), "--adapter", str(result.final_dir), "--quantize", str(bits),
                 "--prompt", "Who are you?", "--temperature", "0", "--max-new-tokens", "12", "--device", "cpu"]) == 0
    session = ChatSession(quantized, glmtune.load_tokenizer(ws["model"]),
                          sampling=SamplingConfig(temperature=0, max_new_tokens=12))
    assert capsys.readouterr().out.strip() == session.chat("Who are you?").content.strip() != ""

    # Export merges the adapter into full-precision weights: the merged model is the reloaded one.
    merged_dir = tmp_path / "merged"
    assert main(["export", "--model", str(ws["model"]), "--adapter", str(result.final_dir), "--out", str(merged_dir),
                 "--dtype", "fp32"]) == 0
    merged = load_base(merged_dir)
    torch.testing.assert_close(_logits(merged, ids), _logits(reloaded, ids), atol=1e-4, rtol=1e-4)


def test_qlora_ptuning_trains_the_prefix_on_a_4bit_base(ws, tmp_path):
    out = tmp_path / "pt4"
    result = run_training(load_config(_config(ws, out, 4, method="ptuning", learning_rate=5e-2)), quiet=True)
    losses = _losses(out)
    assert losses[-1] < losses[0] - 0.2, losses
    ids = torch.tensor([[5, 17, 99, 230, 41, 7]])
    reloaded = glmtune.load_model(ws["model"], prefix=result.final_dir)
    fresh = quantize_model(load_base(ws["model"]), bits=4)
    quant_error = (_logits(load_base(ws["model"]), ids) - _logits(fresh, ids)).abs().max().item()
    assert (_logits(reloaded, ids) - _logits(result.model, ids)).abs().max().item() <= 2.5 * quant_error


@pytest.mark.parametrize("method", ["full", "freeze"])
def test_quantization_refused_for_methods_that_train_the_base(ws, tmp_path, method):
    cfg = _config(ws, tmp_path / "x", 4)
    cfg["method"] = {"name": method}
    with pytest.raises(ConfigError, match=rf"model.quantization.bits=4 needs a frozen base model, but method "
                                          rf"'{method}'.*use method.name=lora"):
        load_config(cfg)


def test_missing_bitsandbytes_refused_before_the_model_loads(ws, tmp_path, monkeypatch):
    import glmtune.methods.quantize as quantize
    import glmtune.train.run as run

    monkeypatch.setattr(quantize, "bitsandbytes_installed", lambda: False)
    monkeypatch.setattr(run, "load_base", lambda *a, **k: pytest.fail("the model was loaded"))
    for overrides, option in ((["model.quantization.bits=8"], "model.quantization.bits=8"),
                              (["model.quantization.bits=null", "training.optim=paged_adamw_8bit"],
                               "training.optim=paged_adamw_8bit")):
        cfg = load_config(_config(ws, tmp_path / "y", 4), overrides)
        with pytest.raises(ConfigError, match=rf"{option} needs bitsandbytes.*pip install 'glmtune\[qlora\]'"):
            run_training(cfg, quiet=True)


def test_dora_on_8bit_refused_with_the_alternative(ws, tmp_path):
    cfg = load_config(_config(ws, tmp_path / "d", 8), ["method.lora.use_dora=true"])
    with pytest.raises(ConfigError, match="use_dora with model.quantization.bits=8.*bits=4 for DoRA"):
        run_training(cfg, quiet=True)


def test_8bit_optimizer_and_offloaded_activations_train_like_the_plain_run(ws, tmp_path):
    """adamw_bnb_8bit keeps uint8 moments and still learns; offloading activations changes nothing on CPU."""
    short = {"max_steps": 3, "logging_steps": 1}
    plain = run_training(load_config(_config(ws, tmp_path / "plain", None, **short)), quiet=True)
    offload = run_training(load_config(_config(ws, tmp_path / "off", None, offload_activations=True, **short)),
                           quiet=True)
    assert _losses(tmp_path / "off") == _losses(tmp_path / "plain")
    assert offload.final_loss == plain.final_loss
    eight = run_training(load_config(_config(ws, tmp_path / "8bit", 4, optim="adamw_bnb_8bit", **short)), quiet=True)
    losses = _losses(tmp_path / "8bit")
    assert losses[-1] < losses[0], losses
    assert eight.global_step == 3


@pytest.mark.parametrize("bits", [4, 8])
def test_parameter_counts_of_a_quantized_base_are_its_unquantized_sizes(ws, bits):
    from glmtune.methods import trainable_parameter_counts

    base = load_base(ws["model"])
    assert trainable_parameter_counts(quantize_model(load_base(ws["model"]), bits=bits))[1] == \
        trainable_parameter_counts(base)[1]


def test_qlora_resume_is_exact(ws, tmp_path):
    """Interrupted at its step-2 checkpoint and resumed, a 4-bit LoRA run ends where the straight run ends."""
    common = {"max_steps": 4, "logging_steps": 1, "save_steps": 2, "batch_size": 4}
    straight = run_training(load_config(_config(ws, tmp_path / "a", 4, **common)), quiet=True)
    shutil.copytree(tmp_path / "a", tmp_path / "b", ignore=shutil.ignore_patterns("final", "checkpoint-4"))
    log = tmp_path / "b" / LOG_FILE
    log.write_text("".join(x for x in log.read_text().splitlines(True) if json.loads(x).get("step", 0) <= 2))
    resumed = run_training(load_config(_config(ws, tmp_path / "b", 4, resume="2", **common)), quiet=True)
    assert resumed.global_step == straight.global_step == 4
    assert _losses(tmp_path / "b") == pytest.approx(_losses(tmp_path / "a"), abs=1e-6)
    with safe_open(straight.final_dir / "adapter_model.safetensors", "pt") as a, \
            safe_open(resumed.final_dir / "adapter_model.safetensors", "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            torch.testing.assert_close(a.get_tensor(key), b.get_tensor(key), rtol=0, atol=1e-6)


def test_quantized_answering_refuses_results_that_replace_base_weights(ws, tmp_path, capsys):
    from glmtune.models import CheckpointError

    cfg = _config(ws, tmp_path / "freeze", None, max_steps=1)
    cfg["method"] = {"name": "freeze"}
    result = run_training(load_config(cfg), quiet=True)
    with pytest.raises(CheckpointError, match="freeze fine-tuning result: it replaces base weights"):
        glmtune.load_model(ws["model"], adapter=result.final_dir, quantization=4)
    with pytest.raises(CheckpointError, match="missing: fine-tuning result folder not found"):
        glmtune.load_model(ws["model"], adapter=tmp_path / "missing", quantization=4)
    with pytest.raises(CheckpointError, match="quantization must be 4 or 8 .bits., got 3"):
        glmtune.load_model(ws["model"], quantization=3)
    dora = _config(ws, tmp_path / "dora", 4, max_steps=1)
    dora["method"]["lora"]["use_dora"] = True
    dora_result = run_training(load_config(dora), quiet=True)
    capsys.readouterr()
    assert main(["chat", "--model", str(ws["model"]), "--adapter", str(dora_result.final_dir), "--quantize", "8",
                 "--prompt", "hi"]) != 0
    assert "DoRA adapter: on an 8-bit base PEFT's DoRA loses the layers' scales; use --quantize=4" in \
        capsys.readouterr().err
    with pytest.raises(CheckpointError, match="DoRA adapter: on an 8-bit base .* use quantization=4"):
        glmtune.load_model(ws["model"], adapter=dora_result.final_dir, quantization=8)
    unadapted = glmtune.load_model(ws["model"], quantization=4)  # no adapter: in eval mode like every load
    assert not any(m.training for m in unadapted.modules())
