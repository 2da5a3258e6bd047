"""LLaMA-Factory training YAMLs: detected, translated, trained; unsupported keys refused with the reason."""

from __future__ import annotations

import json

import pytest
import yaml

from glmtune.cli import main
from glmtune.config import ConfigError, load_config
from glmtune.config.llamafactory import translation_notes

# LLaMA-Factory's examples/train_lora/llama3_lora_sft.yaml, with a ChatGLM3 model, template and a tiny run.
EXAMPLE = """\
### model
model_name_or_path: {model}
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,alpaca_en_demo
template: chatglm3
cutoff_len: 64
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 1

### output
output_dir: saves/chatglm3/lora/sft
logging_steps: 1
save_steps: 500
plot_loss: true
overwrite_output_dir: true

### train
per_device_train_batch_size: 2
gradient_accumulation_steps: 1
learning_rate: 1.0e-4
max_steps: 2
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: false
ddp_timeout: 180000000
report_to: none
"""
IDENTITY = [{"instruction": "hi", "input": "", "output": "Hello! I am {{name}}, an AI assistant developed by {{author}}."},
            {"instruction": "Who are you?", "input": "", "output": "I am {{name}}, developed by {{author}}."}]
ALPACA = [{"instruction": f"Say {w}.", "input": "", "output": w} for w in ("red", "green", "blue", "white")]


@pytest.fixture()
def lf_dir(tmp_path, monkeypatch, chatglm3_dir):
    """A LLaMA-Factory-style working folder: data/dataset_info.json, two datasets, the example YAML."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "identity.json").write_text(json.dumps(IDENTITY), encoding="utf-8")
    (data / "alpaca_en_demo.json").write_text(json.dumps(ALPACA), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps({"identity": {"file_name": "identity.json"},
                                                        "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}}))
    (tmp_path / "lora_sft.yaml").write_text(EXAMPLE.format(model=chatglm3_dir), encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # llamafactory-cli resolves dataset_dir and output_dir against the working dir
    return tmp_path


def test_example_lora_sft_yaml_is_translated(lf_dir, chatglm3_dir):
    cfg = load_config(lf_dir / "lora_sft.yaml")
    assert cfg.model.path == str(chatglm3_dir)
    assert (cfg.method.name, cfg.method.lora.r, cfg.method.lora.alpha, cfg.method.lora.dropout) == ("lora", 8, 16, 0)
    assert cfg.method.lora.target == "all-linear"
    assert cfg.data.datasets == ["identity", "alpaca_en_demo"]
    assert cfg.data.registry_file == str(lf_dir / "data" / "dataset_info.json")
    assert (cfg.data.max_seq_length, cfg.data.max_input_length, cfg.data.max_samples) == (64, None, 1000)
    assert (cfg.training.batch_size, cfg.training.learning_rate, cfg.training.lr_scheduler) == (2, 1e-4, "cosine")
    assert cfg.training.gradient_checkpointing  # LLaMA-Factory's default
    assert cfg.training.extra_args == {"ddp_timeout": 180000000}
    assert cfg.output.dir == "saves/chatglm3/lora/sft"  # relative to the working directory, as in LLaMA-Factory
    assert cfg.evaluation.strategy == "no"


def test_print_config_shows_each_translated_key(lf_dir, capsys):
    assert main(["train", "lora_sft.yaml", "--print-config"]) == 0
    out = capsys.readouterr().out
    for line in ("#   lora_rank", "#   lora_target: 'all' -> method.lora.target 'all-linear'",
                 "#   cutoff_len: 64 -> data.max_seq_length", "#   template: 'chatglm3' -> the official ChatGLM3 format",
                 "#   overwrite_output_dir: ignored", "#   per_device_train_batch_size: 2 -> training.batch_size",
                 "#   ddp_timeout: 180000000 -> training.extra_args.ddp_timeout"):
        assert line in out
    resolved = yaml.safe_load(out)
    assert resolved["data"]["datasets"] == ["identity", "alpaca_en_demo"]
    assert resolved["method"]["lora"]["alpha"] == 16


def test_example_lora_sft_yaml_trains(lf_dir):
    assert main(["train", "lora_sft.yaml", "--quiet"]) == 0
    final = lf_dir / "saves/chatglm3/lora/sft/final"
    assert (final / "adapter_model.safetensors").is_file()
    log = [json.loads(x) for x in (lf_dir / "saves/chatglm3/lora/sft/trainer_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    report = json.loads((lf_dir / "saves/chatglm3/lora/sft/data_report.json").read_text())
    assert report["splits"]["train"]["samples"] == 6  # both datasets, every record
    for name in ("identity.json", "alpaca_en_demo.json", "dataset_info.json"):
        assert (lf_dir / "data" / name).is_file()  # the user's files are untouched


@pytest.mark.parametrize("stage", ["dpo", "rm", "ppo", "kto", "pt"])
def test_unsupported_stage_is_one_clear_error(lf_dir, stage):
    text = (lf_dir / "lora_sft.yaml").read_text().replace("stage: sft", f"stage: {stage}")
    (lf_dir / "x.yaml").write_text(text)
    with pytest.raises(ConfigError, match=rf"x.yaml: .*does not support: stage: {stage} \(.*not supported") as err:
        load_config(lf_dir / "x.yaml")
    assert "sets 1 option glmtune does not support" in str(err.value)


def test_every_unsupported_key_is_named_with_its_reason(lf_dir):
    text = (lf_dir / "lora_sft.yaml").read_text().replace("template: chatglm3", "template: llama3")
    (lf_dir / "x.yaml").write_text(text + "adapter_name_or_path: saves/old\n"
                                   "train_on_prompt: true\nmix_strategy: interleave_under\n")
    with pytest.raises(ConfigError) as err:
        load_config(lf_dir / "x.yaml")
    msg = str(err.value)
    assert "sets 4 options glmtune does not support" in msg
    assert "template: llama3 (glmtune trains the GLM family in each model's official format: use template: " \
           "chatglm3, chatglm2, glm4)" in msg
    assert "adapter_name_or_path: 'saves/old' (training on top of an existing adapter is not supported; merge" in msg
    assert "train_on_prompt: True (prompts are never learned" in msg
    assert "mix_strategy: 'interleave_under' (nearest: sampling ratios" in msg


def test_glm_templates_and_qlora_keys_translate(lf_dir):
    text = (lf_dir / "lora_sft.yaml").read_text().replace("template: chatglm3", "template: glm4")
    (lf_dir / "q.yaml").write_text(text + "quantization_bit: 4\nquantization_type: nf4\ndouble_quantization: false\n")
    cfg = load_config(lf_dir / "q.yaml")
    q = cfg.model.quantization
    assert (q.bits, q.type, q.double_quant) == (4, "nf4", False)
    notes = "\n".join(translation_notes(lf_dir / "q.yaml"))
    assert "template: 'glm4' -> the official GLM-4 format" in notes and "quantization_bit: 4 -> model.quantization.bits" in notes


def test_cli_reports_unsupported_stage_in_one_line(lf_dir, capsys):
    text = (lf_dir / "lora_sft.yaml").read_text().replace("stage: sft", "stage: dpo")
    (lf_dir / "dpo.yaml").write_text(text)
    assert main(["train", "dpo.yaml", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "stage: dpo (DPO / preference training is not supported" in err


def test_unknown_key_names_the_line_and_closest_option(lf_dir):
    (lf_dir / "x.yaml").write_text((lf_dir / "lora_sft.yaml").read_text() + "lora_rnak: 4\n")
    with pytest.raises(ConfigError, match=r"x.yaml, line \d+: lora_rnak .*lora_rank"):
        load_config(lf_dir / "x.yaml")


def test_freeze_and_full_translate_and_ignore_other_methods_keys(lf_dir):
    text = (lf_dir / "lora_sft.yaml").read_text().replace("finetuning_type: lora", "finetuning_type: freeze")
    (lf_dir / "f.yaml").write_text(text + "freeze_trainable_layers: 1\n")
    cfg = load_config(lf_dir / "f.yaml")
    assert (cfg.method.name, cfg.method.freeze.trainable_layers) == ("freeze", 1)
    (lf_dir / "g.yaml").write_text(text.replace("finetuning_type: freeze", "finetuning_type: full"))
    assert load_config(lf_dir / "g.yaml").method.name == "full"


def test_val_size_and_eval_strategy_translate(lf_dir):
    (lf_dir / "v.yaml").write_text((lf_dir / "lora_sft.yaml").read_text()
                                   + "val_size: 0.1\nper_device_eval_batch_size: 1\neval_strategy: steps\n"
                                     "eval_steps: 5\n")
    cfg = load_config(lf_dir / "v.yaml")
    assert (cfg.data.val_size, cfg.evaluation.strategy, cfg.evaluation.steps, cfg.evaluation.batch_size) == \
        (0.1, "steps", 5, 1)


def test_missing_dataset_file_is_named_before_the_model_loads(lf_dir):
    (lf_dir / "data" / "identity.json").rename(lf_dir / "data" / "elsewhere.json")
    with pytest.raises(ConfigError, match=r"dataset 'identity': its file .*identity.json does not exist"):
        load_config(lf_dir / "lora_sft.yaml")


def test_names_missing_from_dataset_info_come_from_the_bundled_registry(lf_dir):
    (lf_dir / "data" / "dataset_info.json").unlink()
    (lf_dir / "data" / "alpaca_en_demo.json").unlink()
    with pytest.raises(ConfigError, match=r"public dataset glmtune knows by name but does not ship.*cannot download"):
        load_config(lf_dir / "lora_sft.yaml")
    text = (lf_dir / "lora_sft.yaml").read_text().replace("dataset: identity,alpaca_en_demo", "dataset: identity")
    (lf_dir / "i.yaml").write_text(text)
    cfg = load_config(lf_dir / "i.yaml")  # identity.json is in data/: the bundled entry finds it there
    assert cfg.data.registry_file == "bundled"


def test_train_dataset_option_replaces_the_files(lf_dir, chatglm3_dir, capsys):
    (lf_dir / "own.yaml").write_text(yaml.safe_dump({"model": {"path": str(chatglm3_dir)},
                                                     "data": {"train_file": "nothing-here.jsonl",
                                                              "data_dir": str(lf_dir / "data")}}))
    with pytest.raises(ConfigError, match="nothing-here"):
        load_config(lf_dir / "own.yaml")
    assert main(["train", "own.yaml", "--dataset", "identity,alpaca_en_demo:0.5", "--print-config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["data"]["datasets"] == ["identity", "alpaca_en_demo:0.5"]
    assert resolved["data"]["train_file"] is None
    assert resolved["data"]["registry_file"] == str(lf_dir / "data" / "dataset_info.json")


def test_glmtune_and_official_configs_are_not_taken_for_llamafactory():
    from glmtune.config.llamafactory import is_llamafactory, translation_notes

    assert is_llamafactory({"model_name_or_path": "x", "dataset": "a"})
    assert not is_llamafactory({"model": {"path": "tiny"}, "data": {"train_file": "a"}})
    assert not is_llamafactory({"data_config": {}, "training_args": {}})


def test_val_size_holds_out_records_that_training_evaluates_on(lf_dir):
    text = (lf_dir / "lora_sft.yaml").read_text().replace("saves/chatglm3/lora/sft", "saves/val")
    (lf_dir / "v.yaml").write_text(text + "val_size: 0.5\nper_device_eval_batch_size: 2\neval_strategy: steps\n"
                                          "eval_steps: 2\n")
    assert main(["train", "v.yaml", "--quiet"]) == 0
    report = json.loads((lf_dir / "saves/val/data_report.json").read_text())["splits"]
    assert (report["train"]["samples"], report["validation"]["samples"]) == (3, 3)  # ceil(0.5 x 2) + ceil(0.5 x 4)
    log = [json.loads(x) for x in (lf_dir / "saves/val/trainer_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval_loss" in r] == [2]
