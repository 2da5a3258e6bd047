"""The memory planner (glmtune.train.plan, ``glmtune plan``): its estimate against measured peaks, and what fits.

Calibration: one subprocess imports torch once, then forks a child per configuration; each child resets its
peak-RSS counter (/proc/self/clear_refs), runs two real training steps (glmtune's model, method, loss and
AdamW) and reports VmHWM. The planner's CPU estimate (fp32, its measured 40 MiB runtime share included) must be within 25% of the
measured increase over the child's starting RSS, and, with that starting RSS added, of the peak RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from glmtune.cli import main
from glmtune.config import ConfigError, load_config
from glmtune.train.plan import GIB, Setup, estimate, fits, model_shape, parse_memory, setup_from_config

ROOT = Path(__file__).resolve().parents[1]

_WORKER = r'''
import json, os, sys
import torch
from glmtune.models import load_model
from glmtune.methods import prepare
from glmtune.train.loss import answer_only_loss, find_lm_head
from glmtune.train.setup import cast_trainable_to_fp32


def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def measure(spec):
    torch.set_num_threads(1)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak RSS := current RSS
    base = status("VmRSS")
    model = load_model(spec["shape"], dtype="fp32", vocab_size=spec["vocab"])
    model.config.use_cache = False
    prepared = prepare(model, spec["method"], spec["options"])
    cast_trainable_to_fp32(prepared.model)
    if spec["ckpt"]:
        prepared.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW([p for p in prepared.model.parameters() if p.requires_grad], lr=1e-4)
    b, n, answer = spec["batch"], spec["length"], spec["answer"]
    ids = torch.randint(3, spec["vocab"], (b, n), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, : n - answer] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    prepared.model.train()
    for _ in range(2):
        answer_only_loss(prepared.model, find_lm_head(prepared.model), inputs).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"base": base, "peak": status("VmHWM")}


for spec in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, json.dumps(measure(spec)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        print(f.read(), flush=True)
    os.waitpid(pid, 0)
'''

# methods x batch x length; the 78.7M benchmark model's layers with an 8k vocabulary (~20M parameters).
_CONFIGS = [
    {"method": "full", "options": {}, "batch": 1, "length": 128, "answer": 64, "ckpt": False},
    {"method": "lora", "options": {"r": 8}, "batch": 2, "length": 256, "answer": 128, "ckpt": False},
    {"method": "ptuning", "options": {"num_virtual_tokens": 16}, "batch": 4, "length": 192, "answer": 64, "ckpt": True},
]
_SHAPE, _VOCAB = "chatglm3-bench", 4096


def _setup(spec: dict) -> Setup:
    o = spec["options"]
    return Setup(method=spec["method"], lora_r=o.get("r", 8), lora_dropout=0.1 if spec["method"] == "lora" else 0.0,
                 prefix_tokens=o.get("num_virtual_tokens", 128), storage="fp32", compute="fp32",
                 batch=spec["batch"], length=spec["length"], answer_length=spec["answer"], checkpointing=spec["ckpt"],
                 device="cpu")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists() or sys.platform != "linux",
                    reason="peak RSS measurement needs Linux /proc/self/clear_refs")
def test_estimate_within_25_percent_of_measured_peak_rss():
    specs = [{**c, "shape": _SHAPE, "vocab": _VOCAB} for c in _CONFIGS]
    out = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(specs)], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    measured = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(measured) == len(specs)
    shape = model_shape(_SHAPE, _VOCAB)
    report = []
    for spec, m in zip(specs, measured):
        est = estimate(shape, _setup(spec)).total
        grew = m["peak"] - m["base"]
        report.append(f"{spec['method']} b{spec['batch']} n{spec['length']} ckpt={spec['ckpt']}: "
                      f"estimate {est / 2**20:.0f} MiB, measured {grew / 2**20:.0f} MiB (x{est / grew:.2f}); "
                      f"peak RSS {m['peak'] / 2**20:.0f} MiB vs {(est + m['base']) / 2**20:.0f} MiB")
    print("\n".join(report))
    for spec, m, line in zip(specs, measured, report):
        est = estimate(shape, _setup(spec)).total
        assert 0.75 <= est / (m["peak"] - m["base"]) <= 1.25, line
        assert 0.75 <= (est + m["base"]) / m["peak"] <= 1.25, line


def test_parts_follow_the_settings():
    shape = model_shape("chatglm3-6b")
    assert shape.total_params() == 6_243_584_000
    lora = Setup(batch=4, length=769, answer_length=512)
    plain, ckpt = estimate(shape, lora, False), estimate(shape, lora, True)
    assert ckpt.activations < plain.activations / 4
    assert plain.weights == ckpt.weights == pytest.approx(2 * shape.total_params())
    # QLoRA-4: linear layers at ~4.1 bits, embeddings and lm_head (2 x 65024 x 4096) at bf16.
    q4 = estimate(shape, Setup(bits=4, batch=4, length=769, answer_length=512))
    embeddings = 2 * 65024 * 4096 * 2
    assert q4.weights - embeddings == pytest.approx(shape.linear_params() * 0.516 + (shape.total_params()
                                                    - shape.linear_params() - 2 * 65024 * 4096) * 2, rel=0.01)
    full = estimate(shape, Setup(method="full", batch=1, length=512, answer_length=256))
    assert full.weights == full.gradients == pytest.approx(4 * shape.total_params())
    assert full.optimizer == pytest.approx(8 * shape.total_params())
    eight = estimate(shape, Setup(method="full", optim="adamw_bnb_8bit", batch=1, length=512, answer_length=256))
    assert eight.optimizer == pytest.approx(2 * shape.total_params())


def test_largest_batch_and_length_fit_and_one_more_does_not():
    shape = model_shape("chatglm3-6b")
    setup = Setup(bits=4, batch=4, length=769, answer_length=512)
    memory = parse_memory("12GiB")
    batch, length = fits(shape, setup, memory, True)
    assert batch >= 4 and length >= 769
    assert estimate(shape, replace(setup, batch=batch), True).total <= memory
    assert estimate(shape, replace(setup, batch=batch + 1), True).total > memory
    assert estimate(shape, replace(setup, length=length), True).total <= memory
    assert estimate(shape, replace(setup, length=length + 64), True).total > memory


def test_parse_memory():
    assert parse_memory("24GiB") == parse_memory("24GB") == parse_memory("24") == 24 * GIB
    assert parse_memory("12000MiB") == 12000 * 2**20
    with pytest.raises(ConfigError, match="24GiB"):
        parse_memory("lots")


def test_plan_command_prints_parts_and_fits(tmp_path, capsys):
    config = tmp_path / "lora.yaml"
    config.write_text("model: {path: THUDM/chatglm3-6b}\ndata: {train_file: train.json, max_input_length: 256, "
                      "max_output_length: 512}\nmethod: {name: lora}\ntraining: {batch_size: 4, "
                      "gradient_checkpointing: true}\n")
    assert main(["plan", str(config), "model.quantization.bits=4", "--memory", "12GiB"]) == 0
    out = capsys.readouterr().out
    assert "model chatglm3-6b (for " in out and "6.24B parameters" in out  # a hub-style path not on disk plans for its shape
    for part in ("weights (4-bit linear + bf16)", "gradients", "optimizer state (adamw_torch)", "activations",
                 "expected peak", "fits 12 GiB with checkpointing: batch up to"):
        assert part in out
    setup = setup_from_config(load_config(str(config), ["model.quantization.bits=4"], check_files=False))
    assert (setup.bits, setup.length, setup.answer_length, setup.compute) == (4, 769, 512, "bf16")


def test_plan_command_unknown_model_names_the_shapes(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{path: {tmp_path / 'nowhere'}}}\ndata: {{train_file: t.json}}\n")
    assert main(["plan", str(config)]) == 2
    err = capsys.readouterr().err
    assert "no config.json to plan from" in err and "chatglm3-6b" in err


def test_checkpointing_every_n_layers_plans_between_none_and_all():
    shape = model_shape("chatglm3-6b")
    setup = Setup(batch=4, length=769, answer_length=512, checkpointing=True)
    every = [estimate(shape, replace(setup, checkpoint_every=n)).activations for n in (1, 2, 4)]
    none = estimate(shape, setup, False).activations
    assert every[0] < every[1] < every[2] < none
    # Layers 0, 2, 4, ... checkpointed: half of the 28 layers keep their tensors.
    per_layer = (none - every[0]) / (shape.layers - 1)
    assert every[1] - every[0] == pytest.approx(14 * per_layer, rel=0.05)
