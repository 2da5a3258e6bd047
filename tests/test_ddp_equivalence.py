"""DDP (torchrun without training.fsdp): two CPU processes over gloo train exactly as one process with the same
global batch, for LoRA, P-Tuning and full fine-tuning; resume and the saved result hold too (issue 14).

Runs from the ``dist_runs`` fixture (conftest.py): 2 processes x batch 2 against 1 process x batch 4.
"""

from __future__ import annotations

import pytest
import torch

from test_fsdp import METHODS, assert_same_training, reloaded_logits


@pytest.mark.parametrize("method", METHODS)
def test_two_ddp_processes_train_as_one_process(dist_runs, method):
    assert_same_training(dist_runs("single") / method, dist_runs("ddp") / method)
    ckpt = dist_runs("ddp") / method / "checkpoint-2"
    assert not (ckpt / "sharded").exists()  # DDP checkpoints hold the method's own files, as one process writes
    assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt"} <= {p.name for p in ckpt.iterdir()}


@pytest.mark.parametrize("method", METHODS)
def test_ddp_resume_is_exact(dist_runs, method):
    runs = dist_runs("ddp")
    assert_same_training(runs / method, runs / f"{method}-resumed", tol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_ddp_result_reloads_with_the_same_logits(dist_runs, dist_workspace, method):
    base = dist_workspace["config"]["model"]["path"]
    single = reloaded_logits(dist_runs("single") / method, base)
    assert (single - reloaded_logits(dist_runs("ddp") / method, base)).abs().max().item() < 1e-5
    assert torch.isfinite(single).all()
