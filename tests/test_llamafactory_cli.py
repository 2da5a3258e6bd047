"""LLaMA-Factory's own example YAML with its key=value overrides, seed -> the val_size split, and datasets by
name the same way for train, data check, eval and the web UI (--dataset, --dataset-dir, --registry)."""

from __future__ import annotations

import json

import pytest
import yaml

from glmtune.cli import main
from glmtune.commands.eval import load_dataset
from glmtune.config import ConfigError, load_config
from glmtune.data.by_name import dataset_names, registry_path
from glmtune.data.errors import DataError
from glmtune.errors import UserError
from test_llamafactory import lf_dir  # noqa: F401  (a fixture: data/ with dataset_info.json, identity, alpaca demo)

# hiyouga/LLaMA-Factory examples/train_lora/llama3_lora_sft.yaml as of 000526908ae9 (its last version), verbatim.
LLAMA3_LORA_SFT = """\
### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,alpaca_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null

### eval
# eval_dataset: alpaca_en_demo
# val_size: 0.1
# per_device_eval_batch_size: 1
# eval_strategy: steps
# eval_steps: 500
"""
# A tiny run on CPU, as one would shrink it for a try: LLaMA-Factory's own override syntax.
SMALL = ["max_steps=2", "cutoff_len=64", "bf16=false", "gradient_accumulation_steps=1", "logging_steps=1",
         "preprocessing_num_workers=1", "dataloader_num_workers=0", "output_dir=saves/lf"]


@pytest.fixture()
def lf_example(lf_dir, chatglm3_dir):
    """LF's example YAML as it is (template llama3) and with ``template: chatglm3``, beside lf_dir's data/."""
    text = LLAMA3_LORA_SFT.replace("meta-llama/Meta-Llama-3-8B-Instruct", str(chatglm3_dir))
    (lf_dir / "llama3_lora_sft.yaml").write_text(text, encoding="utf-8")
    (lf_dir / "chatglm3_lora_sft.yaml").write_text(text.replace("template: llama3", "template: chatglm3"))
    return lf_dir


def test_llamafactory_example_with_another_template_is_one_clear_error(lf_dir, lf_example, capsys):
    assert main(["train", "llama3_lora_sft.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("glmtune: error: llama3_lora_sft.yaml: this LLaMA-Factory config")
    assert "template: llama3 (" in err and "use template: chatglm3" in err


def test_llamafactory_example_trains_with_its_key_value_overrides(lf_dir, lf_example, capsys):
    assert main(["train", "chatglm3_lora_sft.yaml", *SMALL, "--print-config"]) == 0
    out = capsys.readouterr().out
    for line in ("#   max_steps: 2 -> training.max_steps", "#   cutoff_len: 64 -> data.max_seq_length",
                 "#   gradient_accumulation_steps: 1 -> training.gradient_accumulation_steps",
                 "#   save_only_model: False -> training.extra_args.save_only_model"):
        assert line in out
    resolved = yaml.safe_load(out)
    assert (resolved["training"]["max_steps"], resolved["data"]["max_seq_length"]) == (2, 64)
    assert resolved["training"]["precision"] != "bf16" and resolved["output"]["dir"] == "saves/lf"
    assert main(["train", "chatglm3_lora_sft.yaml", *SMALL, "--quiet"]) == 0
    assert (lf_dir / "saves/lf/final/adapter_model.safetensors").is_file()
    log = [json.loads(x) for x in (lf_dir / "saves/lf/trainer_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]


def test_unknown_key_value_override_gets_the_nearest_name(lf_dir, lf_example):
    with pytest.raises(ConfigError, match=r"^command-line override lerning_rate: lerning_rate is not a LLaMA-Factory "
                                          r"option glmtune can use; did you mean 'learning_rate'\?"):
        load_config(lf_dir / "chatglm3_lora_sft.yaml", ["lerning_rate=1e-4"])
    cfg = load_config(lf_dir / "chatglm3_lora_sft.yaml", ["--learning_rate=3e-4", "training.max_steps=5"])
    assert (cfg.training.learning_rate, cfg.training.max_steps) == (3e-4, 5)  # LF keys and glmtune's, together


def test_llamafactory_seed_reaches_the_val_size_split(lf_dir, lf_example):
    base = (lf_dir / "chatglm3_lora_sft.yaml").read_text() + "val_size: 0.1\n"
    (lf_dir / "v.yaml").write_text(base)
    cfg = load_config(lf_dir / "v.yaml")
    assert (cfg.training.seed, cfg.data.seed, cfg.data.val_size) == (42, 42, 0.1)  # Hugging Face's default seed
    (lf_dir / "s.yaml").write_text(base + "seed: 7\n")
    assert (load_config(lf_dir / "s.yaml").data.seed, load_config(lf_dir / "s.yaml").training.seed) == (7, 7)
    assert load_config(lf_dir / "s.yaml", ["seed=3"]).data.seed == 3


def test_relative_registry_is_looked_for_in_the_dataset_dir_then_here(lf_dir, lf_example, monkeypatch):
    (lf_dir / "data" / "mine.json").write_text(json.dumps({"colors": {"file_name": "alpaca_en_demo.json"}}))
    (lf_dir / "top.json").write_text(json.dumps({"hello": {"file_name": "identity.json"}}))
    assert registry_path("mine.json", "data") == str(lf_dir / "data" / "mine.json")
    assert registry_path("top.json", "data") == str(lf_dir / "top.json")
    assert registry_path(None, "data") == str(lf_dir / "data" / "dataset_info.json")
    assert registry_path(None, "elsewhere") == "bundled"
    with pytest.raises(DataError, match=r"--registry nothing.json: not found \(looked for data/nothing.json and "):
        registry_path("nothing.json", "data")
    assert dataset_names("data", "mine.json") == ["colors"]
    assert "alpaca_zh" in dataset_names("elsewhere") and "identity" in dataset_names("elsewhere")


def test_train_data_check_and_eval_read_the_same_names(lf_dir, lf_example, chatglm3_dir, capsys):
    (lf_dir / "data" / "mine.json").write_text(json.dumps({"colors": {"file_name": "alpaca_en_demo.json"}}))
    args = ["--dataset", "colors", "--dataset-dir", "data", "--registry", "mine.json"]
    assert main(["train", "chatglm3_lora_sft.yaml", "--print-config", *args]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["data"]["datasets"] == ["colors"]
    assert resolved["data"]["registry_file"] == str(lf_dir / "data" / "mine.json")
    assert main(["data", "check", *args, "--model", str(chatglm3_dir)]) == 0
    assert "4 records -> 4 samples" in capsys.readouterr().out
    by_name = load_dataset(None, "auto", dataset="colors", dataset_dir="data", registry="mine.json")
    by_file = load_dataset("data/alpaca_en_demo.json", "auto")
    assert [c.messages for c in by_name] == [c.messages for c in by_file] and len(by_name) == 4
    with pytest.raises(UserError, match="needs one of --data FILE or --dataset"):
        load_dataset("data/alpaca_en_demo.json", "auto", dataset="colors")


def test_web_ui_train_form_takes_datasets_by_name(lf_dir, lf_example, chatglm3_dir):
    from glmtune.webui import forms

    form = forms.TrainForm(model_path=str(chatglm3_dir), train_file="", output_root="runs", run_name="r1",
                           dataset=["identity", "alpaca_en_demo:0.5"], dataset_dir="data")
    config, _ = forms.resolve(form)
    assert config["data"]["datasets"] == ["identity", "alpaca_en_demo:0.5"]
    assert config["data"]["registry_file"] == str(lf_dir / "data" / "dataset_info.json")
    assert config["data"]["train_file"] is None
    assert forms.dataset_choices("data") == ["identity", "alpaca_en_demo"]
    with pytest.raises(UserError, match="or choose datasets by name"):
        forms.form_to_config(forms.TrainForm(model_path=str(chatglm3_dir), train_file="", output_root="runs",
                                             run_name="r2"))


def test_dataset_dir_is_the_working_directorys_and_running_elsewhere_says_where(lf_dir, lf_example, monkeypatch):
    elsewhere = lf_dir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError, match=r"chatglm3_lora_sft.yaml: dataset_dir 'data' is not a folder of the working "
                                          r"directory .*elsewhere \(llamafactory-cli resolves it there.*\); it is beside "
                                          r"the config: run from "):
        load_config(lf_dir / "chatglm3_lora_sft.yaml")
    cfg = load_config(lf_dir / "chatglm3_lora_sft.yaml", [f"dataset_dir={lf_dir / 'data'}"])
    assert cfg.data.registry_file == str(lf_dir / "data" / "dataset_info.json")


def test_web_ui_check_and_eval_read_datasets_by_name(lf_dir, chatglm3_dir):
    from glmtune.infer.evaluate import EvalSettings
    from glmtune.infer.loading import load_for_inference
    from glmtune.webui import tasks

    checked = tasks.check_data([], str(chatglm3_dir), tasks.data_config("auto", 64, 64), dataset=["alpaca_en_demo"],
                               dataset_dir="data")
    assert checked.problems == [] and "4 records -> 4 samples" in checked.summary
    model, tok = load_for_inference(str(chatglm3_dir), device="cpu")
    settings = EvalSettings(batch_size=4, max_new_tokens=2)
    by_name = tasks.evaluate_file(model, tok, "", "auto", settings, dataset=["alpaca_en_demo"], dataset_dir="data")
    by_file = tasks.evaluate_file(model, tok, "data/alpaca_en_demo.json", "auto", settings)
    assert [row[1:] for row in by_name[1]] == [row[1:] for row in by_file[1]] and len(by_name[1]) == 4
    assert by_name[1][0][0] == f"{lf_dir / 'data' / 'alpaca_en_demo.json'}:1" and by_name[0].metrics == by_file[0].metrics
