"""Two processes (torchrun, CPU, gloo): one writer, complete checkpoints, each rank on its own device."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import free_port


def test_torchrun_device_is_the_local_rank(monkeypatch):
    from glmtune.train.setup import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == resolve_device("cuda") == "cuda:1"
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("auto") == "cuda"


SCRIPT = textwrap.dedent("""
    import json, sys
    from glmtune.config import load_config
    from glmtune.train import run_training
    root = sys.argv[1]
    cfg = load_config({
        "model": {"path": "tiny", "tokenizer": root + "/tok", "device": "cpu"},
        "data": {"train_file": "train.jsonl", "data_dir": root, "max_input_length": 16,
                 "max_output_length": 16, "cache": False},
        "training": {"max_steps": 4, "batch_size": 2, "logging_steps": 1, "save_steps": 2,
                     "tensorboard": False, "save_total_limit": 1},
        "evaluation": {"strategy": "no"},
        "output": {"dir": root + "/out", "plots": False, "if_exists": "overwrite"},
    })
    result = run_training(cfg, quiet=True)
    print("RESULT", json.dumps({"step": result.global_step, "final": str(result.final_dir)}))
""")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_two_processes_write_once_and_checkpoints_hold_every_rank(tmp_path):
    from glmtune.tokenizer import train_tokenizer

    rows = [{"conversations": [{"role": "user", "content": f"colour of {i}?"},
                               {"role": "assistant", "content": f"item {i} is red."}]} for i in range(16)]
    train_tokenizer([m["content"] for r in rows for m in r["conversations"]] * 4, tmp_path / "tok", vocab_size=300)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "final").mkdir()  # an earlier run: overwrite must delete it once, before anyone writes
    (tmp_path / "out" / ".glmtune-run.json").write_text(json.dumps({"created": ["final", ".glmtune-run.json"]}))
    (tmp_path / "run.py").write_text(SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), str(tmp_path / "run.py"), str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("RESULT") == 2
    out = tmp_path / "out"
    ckpt = out / "checkpoint-4"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"] and not list(out.glob(".tmp-*"))
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()
    assert (ckpt / "trainer_state.json").is_file() and (out / "final" / "adapter_model.safetensors").is_file()
    steps = [json.loads(x)["step"] for x in (out / "trainer_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 4]  # one writer: no line twice
