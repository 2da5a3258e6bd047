"""The training config: examples parse, official demo files map, every bad input has one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from glmtune.config import ConfigError, load_config, save_config
from glmtune.metrics import compute_metrics

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
OFFICIAL = sorted((ROOT / "examples" / "official").glob("*.yaml"))


def test_examples_exist_for_every_method():
    names = {load_config(p, check_files=False).method.name for p in EXAMPLES}
    assert names == {"lora", "ptuning", "freeze", "full"}


@pytest.mark.parametrize("path", EXAMPLES + OFFICIAL, ids=lambda p: p.name)
def test_every_shipped_example_parses(path):
    cfg = load_config(path, check_files=False, model_dir="m", data_dir="d") if "official" in str(path) \
        else load_config(path, check_files=False)
    assert cfg.model.path and cfg.data.train_file


def test_official_lora_maps_onto_our_sections():
    cfg = load_config(ROOT / "examples/official/lora.yaml", model_dir="/models/chatglm3", data_dir="/data/adv",
                      check_files=False)
    assert (cfg.model.path, cfg.data.data_dir, cfg.data.train_file) == ("/models/chatglm3", "/data/adv", "train.json")
    assert (cfg.data.max_input_length, cfg.data.max_output_length, cfg.data.num_workers) == (256, 512, 16)
    assert cfg.training.learning_rate == 5e-5  # "5e-5" is a string for PyYAML: still a float here
    assert (cfg.training.max_steps, cfg.training.batch_size, cfg.training.save_steps) == (3000, 4, 500)
    assert cfg.training.gradient_checkpointing  # the demo always enables it
    assert (cfg.evaluation.strategy, cfg.evaluation.steps, cfg.evaluation.batch_size) == ("steps", 500, 16)
    assert cfg.evaluation.max_new_tokens == 512 and cfg.evaluation.generate
    assert cfg.method.name == "lora" and (cfg.method.lora.r, cfg.method.lora.alpha, cfg.method.lora.dropout) == (8, 32, 0.1)
    assert cfg.output.dir == "./output"


def test_official_ptuning_sft_and_renamed_fields():
    pt = load_config(ROOT / "examples/official/ptuning_v2.yaml", model_dir="m", data_dir="d", check_files=False)
    assert pt.method.name == "ptuning" and pt.method.ptuning.num_virtual_tokens == 128
    sft = load_config(ROOT / "examples/official/sft.yaml", model_dir="m", data_dir="d", check_files=False)
    assert sft.method.name == "full"
    base = {"data_config": {"train_file": "t.json"}, "max_input_length": 8, "max_output_length": 8}
    new = load_config({**base, "training_args": {"eval_strategy": "no", "use_cpu": True}}, model_dir="m",
                      check_files=False)
    assert new.evaluation.strategy == "no" and new.model.device == "cpu"
    old = load_config({**base, "data_config": {"train_file": "t.json", "val_file": "v.json"},
                       "training_args": {"evaluation_strategy": "steps", "eval_steps": 7, "adam_beta2": 0.95}},
                      model_dir="m", check_files=False)
    assert old.evaluation.strategy == "steps" and old.evaluation.steps == 7
    assert old.training.adam_beta2 == 0.95


def _valid(tmp_path) -> dict:
    (tmp_path / "train.jsonl").write_text("{}\n")
    return {"model": {"path": "tiny"}, "data": {"train_file": "train.jsonl", "data_dir": str(tmp_path)}}


def test_unknown_key_names_the_closest_valid_one(tmp_path):
    cfg = tmp_path / "c.yaml"
    (tmp_path / "train.jsonl").write_text("{}\n")
    cfg.write_text("model:\n  path: tiny\ndata:\n  train_file: train.jsonl\ntraining:\n  learning_rat: 1.0e-4\n")
    with pytest.raises(ConfigError, match=r"c\.yaml, line 6: unknown option 'training.learning_rat'; "
                                          r"did you mean 'learning_rate'"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="did you mean 'train_file'"):
        load_config({**_valid(tmp_path), "data": {"trian_file": "x"}})


def test_wrong_type_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="training.batch_size must be an integer, got 'four'"):
        load_config(_valid(tmp_path), ["training.batch_size=four"])
    with pytest.raises(ConfigError, match="training.gradient_checkpointing must be true or false"):
        load_config(_valid(tmp_path), ["training.gradient_checkpointing=3"])


def test_missing_data_file_is_found_before_loading(tmp_path):
    with pytest.raises(ConfigError, match=r"data.val_file '\S*dev.jsonl' not found"):
        load_config(_valid(tmp_path), ["data.val_file=dev.jsonl"])


def test_option_of_another_method_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="method.ptuning options do not apply to method 'lora'"):
        load_config(_valid(tmp_path), ["method.ptuning.num_virtual_tokens=16"])
    official = {"data_config": {"train_file": "t"}, "max_input_length": 8, "max_output_length": 8,
                "peft_config": {"peft_type": "LORA", "num_virtual_tokens": 8}}
    with pytest.raises(ConfigError, match="num_virtual_tokens does not apply to LORA"):
        load_config(official, model_dir="m", check_files=False)


def test_cross_field_checks_and_yaml_no(tmp_path):
    with pytest.raises(ConfigError, match="warmup_steps or training.warmup_ratio, not both"):
        load_config(_valid(tmp_path), ["training.warmup_steps=5", "training.warmup_ratio=0.1"])
    cfg = load_config(_valid(tmp_path), ["evaluation.strategy=no"])  # YAML reads `no` as false
    assert cfg.evaluation.strategy == "no"


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(_valid(tmp_path), ["method.name=ptuning", "method.ptuning.num_virtual_tokens=16"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(path)
    assert again == cfg


def test_metrics_match_a_hand_computed_case():
    # jieba: "这件 连衣裙 很漂亮" vs "这件 连衣裙 非常 漂亮". ROUGE-1 P=2/3 R=2/4 -> F=4/7; ROUGE-2 P=1/2 R=1/3 -> 2/5.
    # BLEU-4 (method3): p1=2/3, p2=1/2, p3=1/(2*1), p4=1/(4*1); BP=exp(1-4/3) -> 0.3237295...
    m = compute_metrics(["这件连衣裙很漂亮", ""], ["这件连衣裙非常漂亮", "任何"])
    assert m["rouge-1"] == pytest.approx(round(4 / 7 * 100, 4) / 2, abs=1e-4)
    assert m["rouge-2"] == pytest.approx(round(2 / 5 * 100, 4) / 2, abs=1e-4)
    import math

    bleu = math.exp(1 - 4 / 3) * (2 / 3 * 1 / 2 * 1 / 2 * 1 / 4) ** 0.25
    assert m["bleu-4"] == pytest.approx(bleu / 2, rel=1e-9)  # the empty prediction scores 0


def test_relative_paths_resolve_where_they_were_written(tmp_path, monkeypatch):
    folder, work = tmp_path / "configs", tmp_path / "work"
    (folder / "data").mkdir(parents=True)
    (work / "mine").mkdir(parents=True)
    for path in (folder / "data" / "train.jsonl", work / "mine" / "dev.jsonl", work / "mine" / "train.jsonl"):
        path.write_text("{}\n")
    (folder / "ds.json").write_text('{"zero_optimization": {"stage": 2}}')
    (folder / "c.yaml").write_text("model: {path: tiny}\ndata: {data_dir: data, train_file: train.jsonl}\n"
                                   "training: {deepspeed: ds.json}\n")
    monkeypatch.chdir(work)
    cfg = load_config(folder / "c.yaml", ["data.val_file=mine/dev.jsonl"])
    assert Path(cfg.data.data_dir) == folder / "data"  # in the file: the file's folder
    assert cfg.data.train_file == "train.jsonl" and Path(cfg.training.deepspeed) == folder / "ds.json"
    assert Path(cfg.data.val_file) == work / "mine" / "dev.jsonl"  # on the command line: the working directory
    # The README's call shape: a train file given on the command line is the working directory's.
    cfg = load_config(folder / "c.yaml", ["data.train_file=mine/train.jsonl"])
    assert Path(cfg.data.train_file) == work / "mine" / "train.jsonl"
    cfg = load_config(folder / "c.yaml", ["data.data_dir=mine", "data.train_file=train.jsonl"])
    assert Path(cfg.data.data_dir) == work / "mine" and cfg.data.train_file == "train.jsonl"
    # The official call keeps its own rule: data files against DATA_DIR (itself against the working directory).
    (work / "official.yaml").write_text("data_config: {train_file: train.jsonl}\nmax_input_length: 8\n"
                                        "max_output_length: 8\n")
    official = load_config(work / "official.yaml", model_dir="tiny", data_dir="mine")
    assert Path(official.data.data_dir) == work / "mine" and official.data.train_file == "train.jsonl"


def test_missing_model_folder_says_glmtune_does_not_download(tmp_path):
    with pytest.raises(ConfigError, match=r"model.path 'THUDM/chatglm3-6b': the model folder .* does not exist\. "
                                          r"glmtune does not download .*looks like a Hugging Face hub id"):
        load_config(_valid(tmp_path), ["model.path=THUDM/chatglm3-6b"])
    with pytest.raises(ConfigError, match=r"or use a named shape .*tiny"):
        load_config(_valid(tmp_path), ["model.path=tinny"])


def test_extra_args_are_checked_against_the_arguments_glmtune_builds(tmp_path):
    # Seq2SeqTrainingArguments-only fields would pass a Seq2Seq check and fail after the model load.
    for key in ("sortish_sampler", "generation_max_length"):
        with pytest.raises(ConfigError, match=f"extra_args.{key} is not a transformers TrainingArguments field"):
            load_config(_valid(tmp_path), [f"training.extra_args.{key}=1"])
    with pytest.raises(ConfigError, match="set training.learning_rate instead"):
        load_config(_valid(tmp_path), ["training.extra_args.learning_rate=0.1"])
    with pytest.raises(ConfigError, match="FSDP is not supported"):
        load_config(_valid(tmp_path), ["training.extra_args.fsdp=full_shard"])
    # The official format may still carry them: accepted, never passed on.
    official = {"data_config": {"train_file": "t"}, "max_input_length": 8, "max_output_length": 8,
                "training_args": {"sortish_sampler": True, "generation_max_length": 64, "generation_num_beams": 1,
                                  "label_smoothing_factor": 0.1}}
    cfg = load_config(official, model_dir="m", check_files=False)
    assert cfg.training.extra_args == {"label_smoothing_factor": 0.1}
    with pytest.raises(ConfigError, match="generation_num_beams 4 is not supported"):
        load_config({**official, "training_args": {"generation_num_beams": 4}}, model_dir="m", check_files=False)


@pytest.mark.parametrize("method", ["ptuning", "lora"])
def test_deepspeed_zero3_is_read_from_the_json_not_the_file_name(tmp_path, method):
    (tmp_path / "ds_zero_3.json").write_text('{"zero_optimization": {"stage": 3}}')
    (tmp_path / "zero3_but_stage2.json").write_text('{"zero_optimization": {"stage": 2}}')
    (tmp_path / "broken.json").write_text("{stage: 3")
    base = [f"method.name={method}"]
    zero3 = load_config(_valid(tmp_path), base + [f"training.deepspeed={tmp_path / 'ds_zero_3.json'}"])
    assert zero3.training.deepspeed.endswith("ds_zero_3.json")  # ZeRO-3 runs (tests/test_deepspeed.py)
    cfg = load_config(_valid(tmp_path), base + [f"training.deepspeed={tmp_path / 'zero3_but_stage2.json'}"])
    assert cfg.training.deepspeed.endswith("zero3_but_stage2.json")
    with pytest.raises(ConfigError, match=r"broken.json: not valid JSON"):
        load_config(_valid(tmp_path), base + [f"training.deepspeed={tmp_path / 'broken.json'}"])
    with pytest.raises(ConfigError, match=r"missing.json: cannot read the DeepSpeed config"):
        load_config(_valid(tmp_path), base + [f"training.deepspeed={tmp_path / 'missing.json'}"])
