"""An official finetune_demo YAML, unchanged, behaves as the official demo: Hugging Face's defaults for what
it leaves out, its key order, its deepspeed path rule, and the bundled files are THUDM's own."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from glmtune.config import ConfigError, load_config
from glmtune.train.setup import Precision, training_arguments

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"data_config": {"train_file": "t.json", "val_file": "v.json"}, "max_input_length": 8,
           "max_output_length": 8}
# sha256 of finetune_demo/configs/*.yaml in THUDM/ChatGLM3 at 732294f42e2625509000daa87a9c3748d0bbb957
# (the newest commit, 2025-01-13).
THUDM_SHA256 = {
    "lora.yaml": "b19cfcbead8dd3a06136a75a9f08914125c08a0e1b92c2eae45da418796f3d6e",
    "ptuning_v2.yaml": "cf0a3bea8c14ec0dde973914f9ab828c629a93caaed23b4b2ebe858e82f7b874",
    "sft.yaml": "c597f00670e53e8c36218e1bd33a1a369fc3e9765044435e73fb4fe40646af9e",
}


def _official(training_args=None, peft=None, **kw):
    data = {**MINIMAL, "training_args": {"output_dir": "out", **(training_args or {})}}
    if peft is not None:
        data["peft_config"] = peft
    return load_config(data, model_dir="m", check_files=False, **kw)


def _args(cfg, tmp_path):
    return training_arguments(cfg, Precision("cpu", "fp32", "fp32"), str(tmp_path / "run"), has_eval=True)


def test_bundled_official_configs_are_thudms_current_files_byte_for_byte():
    bundled = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (ROOT / "examples/official").glob("*.yaml")}
    assert bundled == THUDM_SHA256


def test_options_an_official_yaml_leaves_out_take_hugging_faces_defaults(tmp_path):
    from transformers import Seq2SeqTrainingArguments

    hf = {f.name: f.default for f in dataclasses.fields(Seq2SeqTrainingArguments)}
    cfg = _official()
    args = _args(cfg, tmp_path)
    # Not glmtune's own defaults (cosine, 2e-4, batch 4, log every 10, keep 3 checkpoints, evaluate every 500).
    for name in ("lr_scheduler_type", "learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "logging_steps", "save_total_limit", "save_steps", "num_train_epochs", "max_steps", "warmup_steps",
                 "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "seed",
                 "gradient_accumulation_steps", "dataloader_num_workers"):
        got = getattr(args, name)
        got = got.value if hasattr(got, "value") else got
        assert got == hf[name], name
    assert str(args.eval_strategy.value) == hf["eval_strategy"] == "no"
    assert cfg.evaluation.generate is hf["predict_with_generate"] is False
    # Evaluation asked for without eval_steps: every logging_steps, as Hugging Face does.
    cfg = _official({"evaluation_strategy": "steps", "logging_steps": 7})
    assert (cfg.evaluation.strategy, cfg.evaluation.steps) == ("steps", 7)
    # The demo evaluates on 50 validation records and predicts on the whole test file.
    assert (cfg.evaluation.max_eval_samples, cfg.evaluation.max_test_samples) == (50, None)
    # glmtune's own configs keep their documented defaults.
    own = load_config({"model": {"path": "tiny"}, "data": {"train_file": "t"}}, check_files=False)
    assert (own.training.lr_scheduler, own.training.learning_rate) == ("cosine", 2e-4)


def test_official_lora_without_alpha_or_dropout_takes_peft_defaults():
    from peft import LoraConfig

    cfg = _official(peft={"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4})
    peft = LoraConfig()
    assert (cfg.method.lora.r, cfg.method.lora.alpha, cfg.method.lora.dropout) == (4, peft.lora_alpha,
                                                                                  peft.lora_dropout)
    assert cfg.method.lora.target_modules() == ["q_proj", "k_proj", "v_proj"]  # PEFT's query_key_value for chatglm


def test_save_strategy_no_wins_over_a_later_save_steps(tmp_path):
    # The official files' key order: save_strategy first, then save_steps.
    text = (ROOT / "examples/official/lora.yaml").read_text().replace("save_strategy: steps", "save_strategy: no")
    assert text.index("save_strategy: no") < text.index("save_steps: 500")
    (tmp_path / "lora.yaml").write_text(text)
    cfg = load_config(tmp_path / "lora.yaml", model_dir="m", data_dir="d", check_files=False)
    assert cfg.training.save_steps == 0
    assert str(_args(cfg, tmp_path).save_strategy.value) == "no"
    with pytest.raises(ConfigError, match="save_strategy 'epoch' is not supported"):
        _official({"save_strategy": "epoch"})


def test_relative_deepspeed_path_follows_the_documented_rule(tmp_path, monkeypatch):
    configs, work = tmp_path / "configs", tmp_path / "work"
    configs.mkdir()
    work.mkdir()
    for folder in (configs, work):
        (folder / "ds_zero_2.json").write_text('{"zero_optimization": {"stage": 2}}')
    monkeypatch.chdir(work)
    # Official format: handed to transformers unchanged by finetune_hf.py, so relative to the working directory.
    (configs / "lora.yaml").write_text("data_config: {train_file: t.json}\nmax_input_length: 8\nmax_output_length: 8\n"
                                       "training_args: {output_dir: out, deepspeed: ds_zero_2.json}\n")
    official = load_config(configs / "lora.yaml", model_dir="m", check_files=False)
    assert Path(official.training.deepspeed) == work / "ds_zero_2.json"
    # glmtune's own format: relative to the config file's folder; on the command line: the working directory.
    (configs / "own.yaml").write_text("model: {path: tiny}\ndata: {train_file: t}\ntraining: {deepspeed: ds_zero_2.json}\n")
    assert Path(load_config(configs / "own.yaml", check_files=False).training.deepspeed) == configs / "ds_zero_2.json"
    cli = load_config(configs / "own.yaml", ["training.deepspeed=ds_zero_2.json"], check_files=False)
    assert Path(cli.training.deepspeed) == work / "ds_zero_2.json"


def test_official_sft_yaml_with_its_zero3_config_is_accepted_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.json").write_text("{}\n")
    (tmp_path / "d" / "dev.json").write_text("{}\n")
    # As in the official demo, sft.yaml's `deepspeed: ds_zero_3.json` is relative to the working directory.
    (tmp_path / "ds_zero_3.json").write_bytes((ROOT / "examples/official/ds_zero_3.json").read_bytes())
    cfg = load_config(ROOT / "examples/official/sft.yaml", model_dir="tiny", data_dir="d")
    assert Path(cfg.training.deepspeed) == tmp_path / "ds_zero_3.json"  # ZeRO-3 runs: tests/test_deepspeed.py
