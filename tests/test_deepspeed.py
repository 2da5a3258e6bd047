"""DeepSpeed ZeRO-2 and ZeRO-3 with THUDM's official ds_zero_2.json / ds_zero_3.json, unchanged, on two CPU
processes (gloo): the same training as one process with the same global batch, exact resume from DeepSpeed's
checkpoints, a consolidated result that reloads with ``glmtune.load_model``; under ZeRO-3 the model is built
partitioned, so each process holds about half of it (issue 14).

The runs come from the ``ds_runs`` fixture (conftest.py): one ``torchrun --nproc_per_node 2`` launch per stage
trains LoRA, P-Tuning and full fine-tuning (batch 2 per process) and resumes each from its step-4 checkpoint;
the reference is ``dist_runs("single")`` (one process, batch 4). ds_zero_3.json runs DeepSpeed's own AdamW with
the optimizer state and parameters offloaded to the CPU (its cpu_adam op); the reference runs torch's AdamW.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from glmtune.config import ConfigError, load_config
from glmtune.train import run_training
from glmtune.train.deepspeed import check_cpu_adam, check_resume_engine, needs_cpu_adam
from conftest import DEEPSPEED_MISSING
from test_fsdp import METHODS, RESULT_FILE, assert_same_training, reloaded_logits

OFFICIAL = Path(__file__).resolve().parent.parent / "examples" / "official"
STAGES = (2, 3)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("method", METHODS)
def test_two_deepspeed_processes_train_as_one_process(dist_runs, ds_runs, stage, method):
    assert_same_training(dist_runs("single") / method, ds_runs(stage) / method)
    ckpt = ds_runs(stage) / method / "checkpoint-2"
    # DeepSpeed's own checkpoint (what resume reads) next to the method's files (what glmtune eval reads).
    assert (ckpt / "latest").read_text().strip() == "global_step2"
    assert (ckpt / RESULT_FILE[method]).is_file() and (ckpt / "glmtune_method.json").is_file()
    if stage == 3:  # the optimizer state of each process's partition, one file per process
        assert sorted(p.name for p in (ckpt / "global_step2").glob("*optim_states.pt")) == [
            "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("method", METHODS)
def test_resume_from_a_deepspeed_checkpoint_is_exact(ds_runs, stage, method):
    runs = ds_runs(stage)
    # ZeRO-2 steps with torch's AdamW: bit for bit. ds_zero_3.json steps with DeepSpeed's C++ CPU Adam; after a reload
    # its updates differ in the last float bit (observed: at most 1.4e-7 in weights ~0.1-1; cause not traced).
    assert_same_training(runs / method, runs / f"{method}-resumed", tol=1e-7 if stage == 2 else 1e-6)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("method", METHODS)
def test_deepspeed_result_reloads_with_the_same_logits(dist_runs, ds_runs, dist_workspace, stage, method):
    base = dist_workspace["config"]["model"]["path"]
    single = reloaded_logits(dist_runs("single") / method, base)
    # (test_fsdp checks that this single-process result differs from the base model.)
    assert (single - reloaded_logits(ds_runs(stage) / method, base)).abs().max().item() < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_each_zero3_process_holds_half_the_model(ds_runs, method):
    shares = [json.loads((ds_runs(3) / f"{method}-memory-{rank}.json").read_text()) for rank in (0, 1)]
    # (elements held, elements of the whole model) per process: the whole model is partitioned, frozen base included.
    assert shares[0][1] == shares[1][1] > 0
    assert all(0.45 < local / whole < 0.55 for local, whole in shares), shares
    # Built partitioned (zero.Init) and loaded tensor by tensor: half per process before DeepSpeed even starts.
    for rank in (0, 1):
        built = json.loads((ds_runs(3) / f"{method}-built-{rank}.json").read_text())
        assert built["partitioned"] and 0.45 < built["numel"][0] / built["numel"][1] < 0.55, built
    assert not list(ds_runs(2).glob("*-built-*.json"))  # ZeRO-2 builds the model whole, as without DeepSpeed


def _config(dist_workspace, tmp_path, **training):
    cfg = json.loads(json.dumps(dist_workspace["config"]))
    cfg["training"].update(training)
    cfg["output"] = {"dir": str(tmp_path / "out"), "plots": False}
    return cfg


def test_qlora_with_zero3_is_refused_before_the_model_loads(dist_workspace, tmp_path):
    pytest.importorskip("bitsandbytes")
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip(DEEPSPEED_MISSING)
    cfg = _config(dist_workspace, tmp_path, deepspeed=str(OFFICIAL / "ds_zero_3.json"))
    cfg["model"] = dict(cfg["model"], quantization={"bits": 4})
    cfg["method"] = {"name": "lora"}
    with pytest.raises(ConfigError, match=r"ds_zero_3.json: ZeRO-3 cannot partition a quantized base .*ZeRO-2"):
        run_training(load_config(cfg), quiet=True)
    assert not (tmp_path / "out" / "config.yaml").exists()  # refused with the run's arguments: before data and model


def test_official_zero3_config_needs_cpu_adam_and_a_build_failure_names_the_ways_out(tmp_path, monkeypatch):
    config = json.loads((OFFICIAL / "ds_zero_3.json").read_text())
    assert needs_cpu_adam(config)
    assert not needs_cpu_adam(json.loads((OFFICIAL / "ds_zero_2.json").read_text()))
    no_offload = dict(config, zero_optimization={"stage": 3})
    assert not needs_cpu_adam(no_offload)
    builders = pytest.importorskip("deepspeed.ops.op_builder")
    monkeypatch.setattr(builders.CPUAdamBuilder, "is_compatible", lambda self, verbose=False: False)
    with pytest.raises(ConfigError, match=r"ds_zero_3.json: .*needs DeepSpeed's cpu_adam op, which cannot be built "
                                          r"here .*DS_BUILD_CPU_ADAM=1.*offload_optimizer"):
        check_cpu_adam(str(OFFICIAL / "ds_zero_3.json"))


def test_the_official_deepspeed_configs_are_thudms_files_byte_for_byte():
    # THUDM/ChatGLM3 finetune_demo/configs at 3b52b25 (sft.yaml names ds_zero_3.json; lora.yaml, ptuning_v2.yaml none).
    sha = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in OFFICIAL.glob("*.json")}
    assert sha == {"ds_zero_2.json": "85fe7f66b4e6e56c279e1970e32c5064c123d08cb4d60bc07b1c9f43465e5c89",
                   "ds_zero_3.json": "c79c00314096a8db81a2495181df57d21ad27b6c9cee2e2c6b50e4754000c35c"}


def test_the_zero3_example_runs_unchanged_on_one_process_as_without_deepspeed(dist_runs, dist_workspace, tmp_path):
    """examples/zero3-full.yaml under plain ``glmtune train`` (no launcher: glmtune describes a one-process group
    for DeepSpeed) trains as one process without DeepSpeed, with the reference run's data and batch."""
    import subprocess
    import sys

    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip(DEEPSPEED_MISSING)
    ws = dist_workspace["config"]
    out = tmp_path / "full"
    overrides = [f"model.path={ws['model']['path']}", f"model.tokenizer={ws['model']['tokenizer']}",
                 f"data.data_dir={ws['data']['data_dir']}", "data.train_file=train.jsonl", "data.val_file=null",
                 "data.max_input_length=16", "data.max_output_length=16", "data.cache=false", "training.batch_size=4",
                 "training.gradient_accumulation_steps=1", "training.gradient_checkpointing=false",
                 "training.max_steps=6", "training.save_steps=2", "training.learning_rate=1e-3",
                 "training.tensorboard=false", "training.logging_steps=1", "evaluation.strategy=no", f"output.dir={out}", "output.plots=false"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "glmtune", "train", str(OFFICIAL.parent / "zero3-full.yaml"),
                           *overrides], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "is deprecated" not in proc.stderr  # DeepSpeed's calls of deprecated torch collectives stay quiet
    assert (out / "checkpoint-6" / "global_step6").is_dir()
    assert_same_training(dist_runs("single") / "full", out)


def test_resuming_across_deepspeed_and_no_deepspeed_is_refused_before_the_model(
        dist_runs, ds_runs, dist_workspace, tmp_path):
    # Only reachable with training.resume_allow_changes (training.deepspeed is a training-shaping option).
    out = tmp_path / "run"
    shutil.copytree(ds_runs(2) / "lora", out, ignore=shutil.ignore_patterns("final", "checkpoint-4", "checkpoint-6"))
    before = sorted(p.name for p in out.iterdir())
    cfg = _config(dist_workspace, tmp_path, resume="2", resume_allow_changes=True, batch_size=2)
    cfg["method"] = {"name": "lora", "lora": {"dropout": 0.0}}
    cfg["output"]["dir"] = str(out)
    with pytest.raises(ConfigError, match="without DeepSpeed: a DeepSpeed run wrote it .*global_step"):
        run_training(load_config(cfg), quiet=True)
    assert sorted(p.name for p in out.iterdir()) == before
    # The other way round (checked here directly: a DeepSpeed run would start a process group in this process).
    with pytest.raises(ConfigError, match="with training.deepspeed: it was written without DeepSpeed"):
        check_resume_engine(dist_runs("single") / "lora" / "checkpoint-2", str(OFFICIAL / "ds_zero_2.json"))
    check_resume_engine(ds_runs(3) / "lora" / "checkpoint-2", str(OFFICIAL / "ds_zero_3.json"))
