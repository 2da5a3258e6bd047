"""Config checks: finite numbers, reporting integrations, errors blaming the right source, one unknown-key
checker, the self-documenting schema (--help-config) and a config package without import circles."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from glmtune.config import ConfigError, TrainConfig, load_config
from glmtune.config.doc import field_help
from glmtune.train.setup import TENSORBOARD_OFF, reporting

ROOT = Path(__file__).resolve().parents[1]


def _valid(tmp_path) -> dict:
    return {"model": {"path": "tiny"}, "data": {"train_file": "t.jsonl"}}


def _yaml(tmp_path, training: str = "  learning_rate: 1.0e-4\n") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  path: tiny\ndata:\n  train_file: t.jsonl\ntraining:\n" + training)
    return path


@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-.inf", "1e999"])
def test_non_finite_numbers_are_refused_naming_the_key(tmp_path, value):
    with pytest.raises(ConfigError, match=r"command-line override training.learning_rate: training.learning_rate "
                                          r"must be a finite number"):
        load_config(_valid(tmp_path), [f"training.learning_rate={value}"], check_files=False)
    with pytest.raises(ConfigError, match=r"c\.yaml, line 6: training.learning_rate must be a finite number"):
        load_config(_yaml(tmp_path, f"  learning_rate: {value}\n"), check_files=False)
    official = {"data_config": {"train_file": "t"}, "max_input_length": 8, "max_output_length": 8,
                "training_args": {"output_dir": "o", "learning_rate": yaml.safe_load(value)}}
    with pytest.raises(ConfigError, match="training.learning_rate must be a finite number"):
        load_config(official, model_dir="m", check_files=False)


@pytest.mark.parametrize("override, message", [
    ("training.adam_beta1=1.5", r"training.adam_beta1 must be in \[0, 1\)"),
    ("training.adam_beta2=-0.1", "training.adam_beta2 must be >= 0"),
    ("training.adam_epsilon=0", "training.adam_epsilon must be > 0"),
    ("training.seed=1.0e+30", r"training.seed must be in \[0, 2\*\*32\)"),
    ("training.seed=-1", r"training.seed must be in \[0, 2\*\*32\)"),
    ("training.max_grad_norm=.nan", "training.max_grad_norm must be a finite number"),
    ("training.learning_rate=-1e-4", "training.learning_rate must be > 0"),
])
def test_out_of_range_numbers_are_refused(tmp_path, override, message):
    with pytest.raises(ConfigError, match=f"command-line override {override.split('=')[0]}: .*{message}"):
        load_config(_valid(tmp_path), [override], check_files=False)


def test_a_bad_value_on_the_command_line_is_blamed_on_the_command_line(tmp_path):
    path = _yaml(tmp_path)
    with pytest.raises(ConfigError, match=r"^command-line override training.learning_rate: .*must be > 0"):
        load_config(path, ["training.learning_rate=-1"], check_files=False)
    with pytest.raises(ConfigError, match=r"^command-line override method.lora.r: .*lora.r: must be a positive"):
        load_config(path, ["method.lora.r=0"], check_files=False)
    with pytest.raises(ConfigError, match=r"^command-line override training.warmup_ratio: "):
        load_config(path, ["training.warmup_ratio=2"], check_files=False)
    # The same mistakes written in the file name its line.
    with pytest.raises(ConfigError, match=r"^\S*c\.yaml, line 6: training.learning_rate must be > 0"):
        load_config(_yaml(tmp_path, "  learning_rate: -1\n"), check_files=False)
    (tmp_path / "m.yaml").write_text("model:\n  path: tiny\ndata:\n  train_file: t\nmethod:\n  lora:\n    r: 0\n")
    with pytest.raises(ConfigError, match=r"m\.yaml, line 7: .*lora.r: must be a positive"):
        load_config(tmp_path / "m.yaml", check_files=False)


@pytest.mark.parametrize("override, hint", [
    ("method.lora.rank=4", "did you mean 'r'"),
    ("method.lora.lora_alpha=4", "did you mean 'alpha'"),
    ("method.ptuning.pre_seq_len=4", "did you mean 'num_virtual_tokens'"),
    ("training.lr=1e-4", "did you mean 'learning_rate'"),
    ("training.per_device_train_batch_size=2", "did you mean 'batch_size'"),
    ("training.learning_rat=1e-4", "did you mean 'learning_rate'"),
])
def test_unknown_keys_get_the_closest_name_everywhere(tmp_path, override, hint):
    base = ["method.name=ptuning"] if "ptuning" in override else []
    with pytest.raises(ConfigError, match=rf"^command-line override {override.split('=')[0]}: unknown option .*{hint}"):
        load_config(_valid(tmp_path), base + [override], check_files=False)
    official = {"data_config": {"train_file": "t", "val_fle": "v"}, "max_input_length": 8, "max_output_length": 8}
    with pytest.raises(ConfigError, match="unknown option 'data_config.val_fle'; did you mean 'val_file'"):
        load_config(official, model_dir="m", check_files=False)


def _cfg(tmp_path, *overrides):
    return load_config(_valid(tmp_path), list(overrides), check_files=False)


def test_reporting_is_honoured_or_refused_never_dropped(tmp_path, monkeypatch):
    import transformers.integrations.integration_utils as iu

    monkeypatch.setattr(iu, "get_available_reporting_integrations", lambda: [])  # nothing installed
    with pytest.raises(ConfigError, match=r"training.report_to asks for wandb, but it is not installed: "
                                          r"`pip install wandb`"):
        reporting(_cfg(tmp_path, "training.report_to=[wandb]"))
    with pytest.raises(ConfigError, match=r"training.tensorboard=true asks for tensorboard, but it is not installed"):
        reporting(_cfg(tmp_path, "training.tensorboard=true"))
    with pytest.raises(ConfigError, match="did you mean 'wandb'"):
        reporting(_cfg(tmp_path, "training.report_to=[wanb]"))
    assert reporting(_cfg(tmp_path)) == ([], TENSORBOARD_OFF)  # the default says so once
    assert reporting(_cfg(tmp_path, "training.tensorboard=false")) == ([], None)
    monkeypatch.setattr(iu, "get_available_reporting_integrations", lambda: ["tensorboard", "wandb"])
    assert reporting(_cfg(tmp_path, "training.report_to=[wandb]")) == (["wandb", "tensorboard"], None)
    assert reporting(_cfg(tmp_path, "training.tensorboard=false", "training.report_to=all")) == (["wandb"], None)
    # An official YAML's report_to reaches the Trainer (it was dropped before).
    official = {"data_config": {"train_file": "t"}, "max_input_length": 8, "max_output_length": 8,
                "training_args": {"output_dir": "o", "report_to": "wandb"}}
    assert load_config(official, model_dir="m", check_files=False).training.report_to == ["wandb"]


def _walk(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _walk(hints[f.name], key + ".")
        else:
            yield cls, f, key


def test_every_option_documents_itself_and_help_config_prints_it(capsys):
    from glmtune.cli import main
    from glmtune.config import schema

    for cls in (schema.ModelConfig, schema.MethodConfig, schema.TrainingConfig, schema.EvaluationConfig,
                schema.OutputConfig, schema.TrainConfig):
        for f in dataclasses.fields(cls):  # ours carry help in the field metadata (trl's pattern)
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name}"
    assert main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    for cls, f, key in _walk(TrainConfig):
        assert field_help(cls, f.name), key
        assert f"  {key} (" in out, key
    assert "  training.lr_scheduler (str, default 'cosine')\n      Schedule after warmup" in out
    assert "  method.lora.r (int, default 8)\n" in out


def test_config_package_has_no_import_circles():
    package = ROOT / "src" / "glmtune" / "config"
    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        name = path.stem
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                target = (node.module or "").split(".")[0]
                targets = [target] if target else [a.name for a in node.names]
                graph[name].update(t for t in targets if (package / f"{t}.py").exists())
    graph.pop("__init__")  # the package facade imports everything; nothing imports it back
    for node in graph.values():
        node.discard("__init__")

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,))) for n in graph.get(start, ()))

    circles = [name for name in graph if reaches(name, name)]
    assert circles == []


def test_help_config_imports_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = ("import contextlib, io, sys\nfrom glmtune.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n    status = main(['train', '--help-config'])\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)\n"
            "print(status, len(out.getvalue().splitlines()) > 100, heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "0 True []", result.stderr


def test_method_options_use_the_same_closest_name_checker():
    from glmtune.methods import LoraOptions, MethodError
    from glmtune.methods.options import options_from_dict

    # One hint table for config files, overrides and method option dicts (lora_rank was unknown to the old one).
    with pytest.raises(MethodError, match=r"'lora_rank' \(did you mean 'r'\?\)"):
        options_from_dict(LoraOptions, {"lora_rank": 4}, "lora")
    with pytest.raises(ConfigError, match="did you mean 'r'"):
        load_config({"model": {"path": "tiny"}, "data": {"train_file": "t"}}, ["method.lora.lora_rank=4"],
                    check_files=False)
