"""FSDP2 (training.fsdp) with two CPU processes over gloo: the same training as one process, half the memory
per process, exact resume from sharded checkpoints, a consolidated result that reloads (issue 14).

The runs come from the ``dist_runs`` fixture (conftest.py): one ``torchrun --nproc_per_node 2`` launch trains
LoRA, P-Tuning and full fine-tuning (batch 2 per process) and resumes each from its step-4 checkpoint; the
reference trains in one process with batch 4.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

METHODS = ("lora", "ptuning", "full")
RESULT_FILE = {"lora": "adapter_model.safetensors", "ptuning": "prefix_encoder.safetensors",
               "full": "model.safetensors"}


def logged_losses(run: Path) -> dict[int, float]:
    entries = [json.loads(line) for line in (run / "trainer_log.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in entries if "loss" in e}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / RESULT_FILE[run.name.removesuffix("-resumed")])


def assert_same_training(a: Path, b: Path, tol: float = 1e-5) -> None:
    la, lb = logged_losses(a), logged_losses(b)
    assert sorted(la) == sorted(lb) == [1, 2, 3, 4, 5, 6]
    assert max(abs(la[s] - lb[s]) for s in la) < tol, (la, lb)
    wa, wb = final_weights(a), final_weights(b)
    assert sorted(wa) == sorted(wb) and wa
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < tol


def reloaded_logits(run: Path, base: str) -> torch.Tensor:
    import glmtune

    final, method = run / "final", run.name
    if method == "full":
        model = glmtune.load_model(final)
    else:
        model = glmtune.load_model(base, **{"prefix" if method == "ptuning" else "adapter": final})
    with torch.no_grad():
        return model(input_ids=torch.tensor([[5, 17, 42, 99, 7, 3]])).logits


@pytest.mark.parametrize("method", METHODS)
def test_two_fsdp_processes_train_as_one_process(dist_runs, method):
    assert_same_training(dist_runs("single") / method, dist_runs("fsdp") / method)
    ckpt = dist_runs("fsdp") / method / "checkpoint-2"
    # Sharded: one distributed-checkpoint file per process, no whole-model file; the scheduler and each RNG too.
    assert sorted(p.name for p in (ckpt / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not list(ckpt.glob("*.safetensors"))
    assert {"scheduler.pt", "rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= {p.name for p in ckpt.iterdir()}


@pytest.mark.parametrize("method", METHODS)
def test_each_fsdp_process_holds_half_the_model_and_optimizer_state(dist_runs, method):
    whole = json.loads((dist_runs("single") / f"{method}-memory-0.json").read_text())
    shares = [json.loads((dist_runs("fsdp") / f"{method}-memory-{r}.json").read_text()) / whole for r in (0, 1)]
    assert all(0.4 < share < 0.6 for share in shares), shares


@pytest.mark.parametrize("method", METHODS)
def test_resume_from_a_sharded_checkpoint_is_exact(dist_runs, method):
    runs = dist_runs("fsdp")
    assert_same_training(runs / method, runs / f"{method}-resumed", tol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_consolidated_result_reloads_with_the_same_logits(dist_runs, dist_workspace, method):
    base = dist_workspace["config"]["model"]["path"]
    single = reloaded_logits(dist_runs("single") / method, base)
    sharded = reloaded_logits(dist_runs("fsdp") / method, base)
    assert (single - sharded).abs().max().item() < 1e-5
    import glmtune

    with torch.no_grad():
        untrained = glmtune.load_model(base)(input_ids=torch.tensor([[5, 17, 42, 99, 7, 3]])).logits
    assert (single - untrained).abs().max().item() > 1e-3  # the result holds the training


def test_a_sharded_checkpoint_is_not_resumed_by_one_unsharded_process(dist_runs, dist_workspace, tmp_path):
    from glmtune.config import load_config
    from glmtune.train import run_training
    from glmtune.train.trainer import TrainingError

    out = tmp_path / "run"
    shutil.copytree(dist_runs("fsdp") / "lora", out,
                    ignore=shutil.ignore_patterns("final", "checkpoint-4", "checkpoint-6"))
    cfg = dict(dist_workspace["config"], method={"name": "lora", "lora": {"dropout": 0.0}},
               output={"dir": str(out), "plots": False})
    cfg["training"] = dict(cfg["training"], batch_size=2, resume="2", fsdp={"enabled": True})
    with pytest.raises(TrainingError, match="written by an FSDP run.*torchrun with 2 or more processes"):
        run_training(load_config(cfg), quiet=True)
    assert (out / "checkpoint-2" / "sharded").is_dir()  # left as it was


def test_fsdp_refuses_deepspeed_and_quantization_before_loading(tmp_path):
    from glmtune.config import ConfigError, load_config

    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2}}')
    with pytest.raises(ConfigError, match="both shard the model; choose one"):
        load_config({"model": {"path": "tiny"}, "training": {"fsdp": {"enabled": True}, "deepspeed": str(ds)}})
    with pytest.raises(ConfigError, match=r"QLoRA\) cannot be combined with training.fsdp.enabled.*drop training.fsdp"):
        load_config({"model": {"path": "tiny", "quantization": {"bits": 4}}, "training": {"fsdp": {"enabled": True}}})


def test_one_process_ignores_fsdp(monkeypatch):
    from glmtune.config import load_config
    from glmtune.train.distributed import shard_plan

    cfg = load_config({"model": {"path": "tiny"}, "training": {"fsdp": {"enabled": True, "cpu_offload": True}}},
                      check_files=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert shard_plan(cfg, "fp32") is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    plan = shard_plan(cfg, "bf16")
    assert (plan.compute, plan.cpu_offload, plan.reshard_after_forward) == ("bf16", True, True)


def test_transformers_fsdp_options_are_refused_naming_training_fsdp(tmp_path):
    from glmtune.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="extra_args.fsdp: .*set training.fsdp.enabled=true"):
        load_config({"model": {"path": "tiny"}, "training": {"extra_args": {"fsdp": "full_shard"}}}, check_files=False)


def test_a_deepspeed_config_without_deepspeed_installed_is_refused_before_the_model(tmp_path, monkeypatch):
    import importlib.util

    from glmtune.config import ConfigError, load_config
    from glmtune.train.setup import resolve_precision, training_arguments

    ds = tmp_path / "ds_zero_2.json"
    ds.write_text('{"zero_optimization": {"stage": 2}}')
    cfg = load_config({"model": {"path": "tiny", "device": "cpu"}, "training": {"deepspeed": str(ds)}},
                      check_files=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(ConfigError, match=r"DeepSpeed is not installed; `pip install 'glmtune\[deepspeed\]'`"):
        training_arguments(cfg, resolve_precision(cfg), str(tmp_path / "out"), False)
