"""The one error base of glmtune, at the bottom of the layer order.

Every error caused by the user's input (a bad file, record, option or folder)
derives from :class:`GlmtuneError`; the CLI catches that base and prints the
message as one line, ``glmtune: error: ...``, with no traceback. Anything else
reaching the CLI is a bug in glmtune and keeps its traceback.
"""

from __future__ import annotations

import difflib


class GlmtuneError(Exception):
    """Bad input from the user; the message names the file/record/option, what was expected and the fix."""


class UserError(GlmtuneError):
    """A user error that belongs to no narrower type (command-line arguments, folders, ...)."""


# Names users bring from Hugging Face, PEFT and the official demo -> ours (for the closest-name hint only).
SYNONYMS = {
    "rank": "r", "lora_r": "r", "lora_rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
    "target_modules": "target", "pre_seq_len": "num_virtual_tokens", "encoder_hidden_size": "prefix_hidden_size",
    "lr": "learning_rate", "lr_scheduler_type": "lr_scheduler", "scheduler": "lr_scheduler",
    "epochs": "num_epochs", "num_train_epochs": "num_epochs", "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "batch_size", "eval_steps": "steps", "eval_strategy": "strategy",
    "evaluation_strategy": "strategy", "predict_with_generate": "generate", "output_dir": "dir",
    "resume_from_checkpoint": "resume", "num_proc": "num_workers", "model_name_or_path": "path",
}


def closest(name: str, known: list[str]) -> str:
    """``"did you mean 'x'? "`` for the known name ``name`` most likely meant, or ``""``."""
    name = str(name)
    if SYNONYMS.get(name) in known:
        return f"did you mean {SYNONYMS[name]!r}? "
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return f"did you mean {match[0]!r}? " if match else ""
