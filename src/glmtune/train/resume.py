"""What a resume may change, and when there is nothing left to resume.

A run folder's ``config.yaml`` records the run as it started; a resume with
other training options would silently train something else under that
description. So a resume compares the new config with the recorded one and
refuses any difference in what shapes the training (method, data, schedule,
optimizer, model), listing it, unless ``training.resume_allow_changes=true``
says it is deliberate; then the new config is recorded beside the old one as
``config-resume-STEP.yaml`` and ``config.yaml`` stays as it was.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from ..config import ConfigError, TrainConfig, config_to_dict, save_config
from .layout import DATA_FILES, STATE_FILE

# Options that change how a run is watched or where it runs, not what it trains.
FREE_TO_CHANGE = (
    "output.", "evaluation.", "training.resume", "training.resume_allow_changes", "training.logging_steps",
    "training.save_steps", "training.save_total_limit", "training.dataloader_num_workers",
    "training.tensorboard", "model.device", "data.cache", "data.cache_dir", "data.num_workers",
)


def _flat(data, prefix: str = "") -> dict:
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    out: dict = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def config_changes(recorded: dict, current: dict) -> list[str]:
    """``key: old -> new`` for every training-relevant option that differs."""
    old, new = _flat(recorded), _flat(current)
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if key.startswith(FREE_TO_CHANGE) or old.get(key) == new.get(key):
            continue
        changes.append(f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}")
    return changes


def check_resume_config(cfg: TrainConfig, checkpoint: Path, write: bool) -> list[str]:
    """Refuse a resume whose config differs from the run's ``config.yaml`` (or record it if allowed)."""
    recorded_file = checkpoint.parent / "config.yaml"
    if not recorded_file.is_file():
        return []
    recorded = yaml.safe_load(recorded_file.read_text(encoding="utf-8")) or {}
    # The YAML round trip gives both sides the same types (tuples, floats) before comparing.
    current = yaml.safe_load(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))
    changes = config_changes(recorded, current)
    if not changes:
        return []
    if not cfg.training.resume_allow_changes:
        raise ConfigError(
            f"resuming {checkpoint} with options that differ from the run's {recorded_file}: "
            f"{'; '.join(changes)}. Resume with the recorded options, start a new run in another output.dir, "
            "or set training.resume_allow_changes=true to continue with the new ones deliberately")
    if write:
        save_config(cfg, checkpoint.parent / f"config-resume-{checkpoint_step(checkpoint)}.yaml")
    return changes


def data_fingerprints(cfg: TrainConfig) -> dict[str, dict]:
    """Size and sha256 of every local data file of the run (hub datasets have none)."""
    base = Path(cfg.data.data_dir or ".")
    names = [cfg.data.train_file, cfg.data.val_file, cfg.data.test_file, *cfg.data.train_files]
    found = {}
    for name in dict.fromkeys(n for n in names if n):
        path = base / name
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            found[str(name)] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
    return found


def record_data_files(cfg: TrainConfig, output_dir: Path) -> None:
    """Write ``data_files.json``: what a later resume checks the data against."""
    (output_dir / DATA_FILES).write_text(json.dumps(data_fingerprints(cfg), indent=1) + "\n", encoding="utf-8")


def check_resume_data(cfg: TrainConfig, checkpoint: Path, write: bool) -> list[str]:
    """Refuse a resume whose data files changed since the run started (or record it if allowed)."""
    recorded_file = checkpoint.parent / DATA_FILES
    try:
        recorded = json.loads(recorded_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # a run from before data_files.json: nothing to compare with
    current = data_fingerprints(cfg)
    changed = [name for name in sorted(recorded.keys() | current.keys()) if recorded.get(name) != current.get(name)]
    if not changed:
        return []
    if not cfg.training.resume_allow_changes:
        raise ConfigError(
            f"resuming {checkpoint}: the data changed since the run started ({recorded_file} differs for "
            f"{', '.join(changed)}: other contents, or a file added/removed); the resumed steps would train on "
            "other samples than the run describes. Restore the data, start a new run in another output.dir, "
            "or set training.resume_allow_changes=true to continue on the new data deliberately")
    if write:
        step = checkpoint_step(checkpoint)
        (checkpoint.parent / f"data-resume-{step}.json").write_text(json.dumps(current, indent=1) + "\n",
                                                                      encoding="utf-8")
    return [f"data file {name} changed" for name in changed]


def checkpoint_step(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8")).get("global_step", 0))


def finished(cfg: TrainConfig, checkpoint: Path) -> int | None:
    """The step a checkpoint ended the run at, if it already reached the end; else None."""
    state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    step = int(state.get("global_step", 0))
    if cfg.training.max_steps <= 0 and state.get("num_train_epochs") != cfg.training.num_epochs:
        return None  # an epoch count changed on purpose (resume_allow_changes): the Trainer works out the end
    target = cfg.training.max_steps if cfg.training.max_steps > 0 else int(state.get("max_steps") or 0)
    return step if target and step >= target else None
