"""The ``glmtune`` command itself: every subcommand registered, packaging mistakes loud, user errors one line."""

from __future__ import annotations

import pytest

from glmtune import cli


def test_every_command_module_is_registered():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {name.replace("_", "-") for name in cli.COMMAND_MODULES}


def test_a_missing_command_module_fails_loudly(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "not_shipped"))
    with pytest.raises(ModuleNotFoundError, match="not_shipped"):
        cli.build_parser()


def test_user_error_types_are_imported_not_guessed():
    from glmtune.config import ConfigError
    from glmtune.data.errors import DataError
    from glmtune.methods.errors import MethodError

    from glmtune.devices import DeviceError
    from glmtune.errors import GlmtuneError
    from glmtune.models.convert import CheckpointError
    from glmtune.tokenizer import TokenizerError
    from glmtune.train import TrainingError

    assert GlmtuneError in cli.user_error_types()
    for error in (ConfigError, DataError, MethodError, DeviceError, CheckpointError, TokenizerError, TrainingError):
        assert issubclass(error, GlmtuneError), error
