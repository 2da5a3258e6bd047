"""The training loop end to end on CPU: every method, resume, gradient accumulation, signals.

A random "tiny" GLM with a small SentencePiece tokenizer (a few hundred ids)
keeps every run to a few seconds on two cores.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from transformers import TrainerCallback

from glmtune.config import ConfigError, load_config
from glmtune.train import TrainingError, run_training

COLORS = ["red", "blue", "green", "black"]


def _records(n: int) -> list[dict]:
    return [{"conversations": [{"role": "user", "content": f"What colour is item {i}?"},
                               {"role": "assistant", "content": f"Item {i} is {COLORS[i % 4]}."}]}
            for i in range(n)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from glmtune.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("train")
    records = _records(24)
    texts = [m["content"] for r in records for m in r["conversations"]] * 4
    train_tokenizer(texts, root / "tok", vocab_size=300)
    for name, rows in (("train.jsonl", records), ("dev.jsonl", records[:4])):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def _cfg(workdir, out, method="lora", **over):
    data = {
        "model": {"path": "tiny", "tokenizer": str(workdir / "tok"), "device": "cpu"},
        "data": {"train_file": "train.jsonl", "data_dir": str(workdir), "max_input_length": 16,
                 "max_output_length": 16, "cache": False},
        "method": {"name": method},
        "training": {"max_steps": 8, "batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1,
                     "save_steps": 0, "lr_scheduler": "constant", "seed": 3, "tensorboard": False},
        "evaluation": {"strategy": "no"},
        "output": {"dir": str(out), "plots": False},
    }
    overrides = [f"{k}={v}" for k, v in over.items()]
    return load_config(data, overrides)


def _losses(out) -> list[tuple[int, float]]:
    lines = (out / "trainer_log.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _base_params(model) -> dict[str, torch.Tensor]:
    """The frozen GLM weights of a trained model, under GlmForCausalLM's own names."""
    from glmtune.methods.ptuning import find_glm

    glm = find_glm(model)
    out = {}
    for name, p in glm.named_parameters():
        if "lora_" in name:
            continue
        out[name.replace("base_model.model.", "").replace(".base_layer", "")] = p.detach()
    return out


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


@pytest.mark.parametrize("method,options", [
    ("lora", {"training.learning_rate": 5e-2}),
    ("ptuning", {"method.ptuning.num_virtual_tokens": 4, "training.learning_rate": 3e-1}),
    ("freeze", {"method.freeze.trainable_layers": 1}),
    ("full", {"training.learning_rate": 1e-3}),
])
def test_each_method_trains_only_its_params_and_reloads(workdir, tmp_path, method, options):
    from glmtune import load_model
    from glmtune.methods import load_trained

    cfg = _cfg(workdir, tmp_path / "out", method, **options)
    result = run_training(cfg, quiet=True)
    losses = [loss for _, loss in _losses(result.output_dir)]
    assert all(map(lambda x: x == x and abs(x) != float("inf"), losses))
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.1, losses  # clearly falling (from ~ln(vocab))

    vocab = result.model.config.vocab_size
    fresh = load_model("tiny", dtype="fp32", vocab_size=vocab, seed=cfg.training.seed)
    before = dict(fresh.named_parameters())
    changed = {n for n, p in _base_params(result.model).items() if not torch.equal(p, before[n])}
    if method in ("lora", "ptuning"):
        assert changed == set()  # the base model is untouched
    elif method == "freeze":
        assert changed and all(n.startswith("model.layers.1.") for n in changed), changed
    else:
        assert "model.layers.0.self_attn.q_proj.weight" in changed and "lm_head.weight" in changed

    ids = [64790 % vocab, 5, 17, 42, 9]
    reloaded = load_trained(load_model("tiny", dtype="fp32", vocab_size=vocab, seed=cfg.training.seed),
                            result.final_dir)
    torch.testing.assert_close(_logits(reloaded, ids), _logits(result.model, ids), rtol=0, atol=1e-5)
    assert (result.output_dir / "config.yaml").is_file() and (result.output_dir / "data_report.json").is_file()


class _InterruptAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal path: handler -> checkpoint -> stop


@pytest.mark.parametrize("method,options", [
    ("lora", {}),
    ("ptuning", {"method.ptuning.num_virtual_tokens": 4}),
    ("freeze", {"method.freeze.trainable_layers": 1, "training.learning_rate": 1e-3}),
])
def test_resume_after_interrupt_matches_straight_run(workdir, tmp_path, method, options):
    common = {"training.max_steps": 10, "training.save_steps": 5, "training.lr_scheduler": "cosine",
              "training.warmup_steps": 2, **options}
    straight = run_training(_cfg(workdir, tmp_path / "a", method, **common), quiet=True)

    # Step 8 of 10 is inside the second epoch (6 steps an epoch): the resumed run skips into that epoch's order.
    first = run_training(_cfg(workdir, tmp_path / "b", method, **common), quiet=True, callbacks=[_InterruptAt(8)])
    assert first.interrupted == "SIGINT" and first.final_dir is None and first.global_step == 8
    assert (tmp_path / "b" / "checkpoint-8" / "trainer_state.json").is_file()
    resumed = run_training(_cfg(workdir, tmp_path / "b", method, **common, **{"training.resume": "yes"}),
                           quiet=True)
    assert resumed.global_step == 10

    a, b = _trainable(straight.model), _trainable(resumed.model)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    la, lb = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert [s for s, _ in la] == [s for s, _ in lb] == list(range(1, 11))
    for (_, x), (_, y) in zip(la, lb):
        assert abs(x - y) <= 1e-6


def test_gradient_accumulation_matches_larger_batch(workdir, tmp_path):
    common = {"training.max_steps": 3, "method.lora.dropout": 0.0}
    big = run_training(_cfg(workdir, tmp_path / "a", **common, **{"training.batch_size": 4}), quiet=True)
    acc = run_training(_cfg(workdir, tmp_path / "b", **common, **{"training.batch_size": 2,
                                                                   "training.gradient_accumulation_steps": 2}),
                       quiet=True)
    a, b = _trainable(big.model), _trainable(acc.model)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # the update happened
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5)


def test_existing_run_is_refused_and_partial_checkpoints_ignored(workdir, tmp_path):
    out = tmp_path / "out"
    run_training(_cfg(workdir, out, **{"training.max_steps": 2, "training.save_steps": 1}), quiet=True)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert not list(out.glob(".tmp-*"))
    with pytest.raises(ConfigError, match="already holds a run"):
        run_training(_cfg(workdir, out), quiet=True)
    # A crash mid-save leaves only a .tmp- folder: resume must pick the newest COMPLETE checkpoint.
    (out / ".tmp-checkpoint-3").mkdir()
    (out / "checkpoint-4").mkdir()  # no trainer_state.json: incomplete
    from glmtune.train.layout import resolve_resume

    assert resolve_resume("yes", out).name == "checkpoint-2"


def test_run_that_failed_at_model_load_can_be_started_again(workdir, tmp_path):
    from glmtune.train.layout import has_run

    out = tmp_path / "out"
    # A folder with a tokenizer but no checkpoint: the data step passes, the model load fails.
    broken = _cfg(workdir, out, **{"model.path": str(workdir / "tok"), "model.tokenizer": ""})
    with pytest.raises(Exception):
        run_training(broken, quiet=True)
    assert (out / "config.yaml").is_file() and not has_run(out)
    result = run_training(_cfg(workdir, out, **{"training.max_steps": 1}), quiet=True)
    assert result.final_dir is not None and has_run(out)


def test_bad_training_arguments_fail_before_anything_is_written(workdir, tmp_path):
    out = tmp_path / "out"
    # A real TrainingArguments field with a value transformers refuses: caught before the folder or model.
    with pytest.raises(ConfigError, match="inconsistent for transformers"):
        run_training(_cfg(workdir, out, **{"training.extra_args": "{load_best_model_at_end: true}",
                                            "training.save_steps": 2}), quiet=True)
    assert not out.exists()


def test_nonfinite_loss_stops_with_step_and_cause(workdir, tmp_path):
    cfg = _cfg(workdir, tmp_path / "out", **{"training.learning_rate": 1e6, "training.max_grad_norm": 0,
                                              "method.lora.r": 8})
    with pytest.raises(TrainingError, match=r"at step \d+.*likely cause"):
        run_training(cfg, quiet=True)


@pytest.mark.parametrize("peft", ["  peft_type: LORA\n  task_type: CAUSAL_LM\n  r: 4\n  lora_alpha: 16\n"
                                  "  lora_dropout: 0.1\n",
                                  "  peft_type: PREFIX_TUNING\n  task_type: CAUSAL_LM\n  num_virtual_tokens: 4\n"],
                         ids=["LORA", "PREFIX_TUNING"])
def test_official_yaml_runs_unchanged_on_the_fixture_model(tmp_path, peft, monkeypatch, chatglm3_dir):
    from glmtune.cli import main

    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _records(8))
    (data / "train.json").write_text(rows)
    (data / "dev.json").write_text(rows)
    (tmp_path / "cfg.yaml").write_text(
        "data_config:\n  train_file: train.json\n  val_file: dev.json\n  test_file: dev.json\n  num_proc: 1\n"
        "max_input_length: 16\nmax_output_length: 16\ntraining_args:\n  output_dir: ./output\n  max_steps: 2\n"
        "  learning_rate: 3e-4\n  per_device_train_batch_size: 4\n  dataloader_num_workers: 0\n"
        "  remove_unused_columns: false\n  save_strategy: steps\n  save_steps: 2\n  log_level: info\n"
        "  logging_strategy: steps\n  logging_steps: 1\n  per_device_eval_batch_size: 4\n"
        "  evaluation_strategy: steps\n  eval_steps: 2\n  predict_with_generate: true\n"
        "  generation_config:\n    max_new_tokens: 4\n  use_cpu: true\npeft_config:\n" + peft)
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(data), str(chatglm3_dir), "cfg.yaml", "--quiet"]) == 0
    out = tmp_path / "output"
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and (out / "final").is_dir()
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert metrics["num_samples"] == 8 and set(metrics) >= {"rouge-1", "rouge-2", "rouge-l", "bleu-4"}
    assert len((out / "test" / "predictions.jsonl").read_text().splitlines()) == 8
    log = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert any("eval_loss" in r for r in log) and any("eval_rouge-1" in r for r in log)
    # glmtune eval on the trained result and the same data and settings scores exactly what training did.
    tuned = ["--adapter" if "LORA" in peft else "--prefix", str(out / "final")]
    assert main(["eval", "--model", str(chatglm3_dir), *tuned, "--data", str(data / "dev.json"),
                 "--max-new-tokens", "4",
                 "--max-input-length", "16", "--batch-size", "4", "--device", "cpu", "--out", "cli-eval"]) == 0
    cli = json.loads((tmp_path / "cli-eval" / "metrics.json").read_text())
    assert {k: cli[k] for k in ("rouge-1", "rouge-2", "rouge-l", "bleu-4")} == \
        {k: metrics[k] for k in ("rouge-1", "rouge-2", "rouge-l", "bleu-4")}
    train_rows = [json.loads(x)["prediction"] for x in (out / "test" / "predictions.jsonl").read_text().splitlines()]
    cli_rows = [json.loads(x)["prediction"] for x in (tmp_path / "cli-eval" / "predictions.jsonl").read_text().splitlines()]
    assert train_rows == cli_rows
    # The same command with "yes" resumes (nothing left to do) instead of refusing the existing run.
    assert main(["train", str(data), str(chatglm3_dir), "cfg.yaml", "yes", "--quiet"]) == 0


def test_checkpointing_every_n_layers_checkpoints_those_layers_and_trains_the_same(workdir, tmp_path):
    """``training.checkpoint_every_n_layers`` reaches transformers' ``every_n_layers``; recomputation is exact."""
    from glmtune.models import find_glm

    common = {"training.max_steps": 3, "method.lora.dropout": 0.0}
    plain = run_training(_cfg(workdir, tmp_path / "a", **common), quiet=True)
    half = run_training(_cfg(workdir, tmp_path / "b", **common, **{"training.gradient_checkpointing": "true",
                                                                    "training.checkpoint_every_n_layers": 2}),
                        quiet=True)
    flags = [layer.gradient_checkpointing for layer in find_glm(half.model).model.layers]
    assert len(flags) >= 2 and flags == [i % 2 == 0 for i in range(len(flags))]
    assert not any(layer.gradient_checkpointing for layer in find_glm(plain.model).model.layers)
    for (_, x), (_, y) in zip(_losses(tmp_path / "a"), _losses(tmp_path / "b"), strict=True):
        assert abs(x - y) <= 1e-6
    with pytest.raises(ConfigError, match="training.checkpoint_every_n_layers must be > 0"):
        _cfg(workdir, tmp_path / "c", **{"training.checkpoint_every_n_layers": 0})


class _SamplerSeen(TrainerCallback):
    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.sampler = train_dataloader.batch_sampler.sampler


def test_packed_rows_train_in_balanced_steps_padded_samples_in_the_official_random_order(workdir, tmp_path):
    from glmtune.data.sampler import BalancedSampler

    packed, padded = _SamplerSeen(), _SamplerSeen()
    run_training(_cfg(workdir, tmp_path / "a", **{"training.max_steps": 1, "training.gradient_accumulation_steps": 2}),
                 quiet=True, callbacks=[packed])
    run_training(_cfg(workdir, tmp_path / "b", **{"training.max_steps": 1, "data.packing": "false"}),
                 quiet=True, callbacks=[padded])
    assert isinstance(packed.sampler, BalancedSampler) and not isinstance(padded.sampler, BalancedSampler)
    # One optimizer step is 4 rows x 2 accumulated batches, seeded by training.seed.
    assert (packed.sampler.batch, packed.sampler.batches, packed.sampler.seed) == (4, 2, 3)
    assert len(packed.sampler.work) == len(packed.sampler) > 0 and sorted(packed.sampler) == list(range(len(packed.sampler)))


def test_balanced_order_resumed_mid_epoch_on_two_processes_replays_that_epoch():
    """accelerate's loader for process p of 2, as the Trainer builds it, resumed 3 batches into epoch 1."""
    from accelerate.data_loader import prepare_data_loader, skip_first_batches
    from torch.utils.data import DataLoader

    from glmtune.data.sampler import BalancedSampler
    from glmtune.train.trainer import expose_sampler

    work = [float(1 + i % 7) for i in range(40)]

    def loader(process):
        plain = DataLoader(list(range(40)), batch_size=2, sampler=BalancedSampler(work, 2, batches=2, seed=4))
        return expose_sampler(prepare_data_loader(plain, num_processes=2, process_index=process))

    for process in (0, 1):
        straight = loader(process)
        straight.set_epoch(1)
        epoch1 = [b.tolist() for b in straight]
        resumed = skip_first_batches(loader(process), 3)
        resumed.set_epoch(1)  # what the Trainer calls on the resumed loader
        assert [b.tolist() for b in resumed] == epoch1[3:]
        straight.set_epoch(0)
        assert [b.tolist() for b in straight] != epoch1  # the epochs' orders differ, so the check above means it


def test_step_geometry_follows_how_the_loader_is_split():
    from types import SimpleNamespace

    from glmtune.train.trainer import step_geometry

    args = SimpleNamespace(world_size=2, gradient_accumulation_steps=3, per_device_train_batch_size=4,
                           train_batch_size=4, n_gpu=1)
    assert step_geometry(args, split_batches=False) == (4, 6)  # whole batches to the processes in turn
    assert step_geometry(args, split_batches=True) == (2, 6)  # each batch sliced between the 2 processes
    one_process_two_gpus = SimpleNamespace(world_size=1, gradient_accumulation_steps=1, per_device_train_batch_size=4,
                                           train_batch_size=8, n_gpu=2)
    assert step_geometry(one_process_two_gpus, split_batches=False) == (4, 2)  # nn.DataParallel halves each batch
