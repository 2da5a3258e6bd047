"""The run folder, what it holds, and the rules for an existing one.

``OUTPUT/`` (``output.dir``, the official ``training_args.output_dir``)::
    config.yaml            the resolved config: every option, defaults included
    data_report.json       what the data step kept, cut and skipped (glmtune.data)
    trainer_log.jsonl      one JSON line per log event: step, epoch, loss, learning_rate,
                           grad_norm, tokens_per_second, eval_loss, eval_rouge-1, ...
    checkpoint-N/          every training.save_steps steps, newest training.save_total_limit kept;
                           the method's weights (as in final/) + optimizer.pt, scheduler.pt,
                           rng_state.pth, trainer_state.json; usable as an adapter/prefix as is
    final/                 the result: LoRA adapter (adapter_config.json + adapter_model.safetensors),
                           P-Tuning prefix (prefix_encoder.safetensors + config.json), or a model
                           folder (freeze/full), plus the tokenizer
    eval/step-N/           predictions.jsonl (prompt, reference, prediction per sample) and
                           metrics.json of the generation evaluation at step N
    test/                  predictions.jsonl and metrics.json on the test set after training
    loss.png               raw and smoothed training loss, eval loss and learning rate (matplotlib)
    runs/                  TensorBoard event files (when tensorboard is installed)
    data_files.json        size and sha256 of each data file at the start (a resume refuses changed data)
    config-resume-N.yaml   the options of a resume from step N that changed them (training.resume_allow_changes);
                           data-resume-N.json the data files' fingerprints of such a resume
    .glmtune-run.json      the entries a run created here (what output.if_exists=overwrite may remove)
    .glmtune.lock          locked (flock) while a process writes the run

Checkpoints are written to ``.tmp-save/checkpoint-N`` and renamed only once every
file is flushed to disk, so a folder named ``checkpoint-N`` is always
complete; a crash leaves at most a ``.tmp-*`` folder, which resume ignores
and the next save removes. An existing run is never silently overwritten:
``output.if_exists`` says refuse (default), resume or overwrite.

Overwrite removes only what glmtune wrote: ``.glmtune-run.json`` lists the
entries of the folder a run created, plus ``checkpoint-N``/``.tmp-*`` folders;
a file inside them that glmtune does not write (a note in ``final/``) makes the
overwrite refuse, deleting nothing. A non-empty folder without the manifest is
not written into at all. A folder that is, or contains, the working folder, the
config file being run, a data file or the model folder is refused for overwrite. ``.glmtune.lock`` is held (``flock``)
by the process writing the run; the kernel drops it when that process dies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ..config import ConfigError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-"
# A complete checkpoint always holds this file: HF writes it last, and we rename after it.
STATE_FILE = "trainer_state.json"
RESUME_LATEST = ("auto", "yes", "latest", "true")
LOG_FILE = "trainer_log.jsonl"
FINAL_DIR = "final"
MANIFEST = ".glmtune-run.json"
LOCK_FILE = ".glmtune.lock"
# Every top-level name a run may create (checkpoint-N and .tmp-* are matched by pattern).
DATA_FILES = "data_files.json"
RUN_NAMES = ("config.yaml", "data_report.json", LOG_FILE, FINAL_DIR, "eval", "test", "runs", "loss.png",
             LOCK_FILE, MANIFEST, DATA_FILES)
RESUMED_CONFIG_RE = re.compile(r"^(config-resume-\d+\.yaml|data-resume-\d+\.json)$")
# What glmtune itself writes inside its folders (final/, checkpoint-N/, eval/, test/, runs/): weights,
# optimizer/scheduler/rng state, tokenizer and remote-code files, configs, predictions, metrics, events.
# Anything else there is the user's, and an overwrite refuses rather than delete it.
OWN_FILE_RE = re.compile(
    r"^(.*\.(safetensors|json|jsonl|pt|pth|bin|model|jinja|tiktoken|py)|merges\.txt|vocab\.txt|README\.md"
    r"|events\.out\.tfevents\..*)$")


def is_complete(checkpoint: Path) -> bool:
    """A checkpoint folder whose trainer state (written last) is there and readable."""
    try:
        json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def has_run(output_dir: Path) -> bool:
    """Whether ``output_dir`` holds results of an earlier run worth protecting.

    That is: a complete checkpoint, a ``final/`` result, or a non-empty training
    log. ``config.yaml`` and ``data_report.json`` alone are not a run: they are
    written before the model loads, and a run that failed there (wrong path, no
    memory) must not block the corrected command in the same folder.
    """
    if not output_dir.is_dir():
        return False
    log = output_dir / LOG_FILE
    return (bool(checkpoints(output_dir)) or (output_dir / FINAL_DIR).is_dir()
            or (log.is_file() and log.stat().st_size > 0))


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint folder that ``training.resume`` designates, or None to start fresh.

    ``auto``/``yes``/``latest``: the newest complete checkpoint (None if there is
    none yet, as the official demo does); a number N: ``checkpoint-N``; otherwise
    a checkpoint folder path.
    """
    if resume is None:
        return None
    if resume.lower() in RESUME_LATEST:
        found = checkpoints(output_dir)
        return found[-1][1] if found else None
    if resume.isdigit():
        path = output_dir / f"checkpoint-{int(resume)}"
        if not is_complete(path):
            steps = [str(n) for n, _ in checkpoints(output_dir)] or ["none"]
            raise ConfigError(f"training.resume={resume}: no complete checkpoint-{resume} in {output_dir} "
                              f"(available steps: {', '.join(steps)}); pick one of them, or 'yes' for the newest")
        return path
    path = Path(resume)
    if not is_complete(path):
        raise ConfigError(f"training.resume={resume}: not a complete checkpoint folder (no {STATE_FILE}); "
                          "give a checkpoint-N folder, a step number, or 'yes' for the newest")
    return path


def _claimed(output_dir: Path) -> set[str]:
    try:
        return set(json.loads((output_dir / MANIFEST).read_text(encoding="utf-8"))["created"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def claim_run_names(output_dir: Path) -> None:
    """Record which run names this folder did not hold before glmtune (those glmtune may remove later)."""
    claimed = _claimed(output_dir)
    present = {child.name for child in output_dir.iterdir()}
    created = sorted(claimed | {name for name in RUN_NAMES if name not in present} | {MANIFEST})
    tmp = output_dir / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"created": created}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, output_dir / MANIFEST)


def run_artifacts(output_dir: Path) -> list[Path]:
    """What an overwrite may remove: entries glmtune created (manifest), checkpoints, partial saves.

    Without a manifest nothing is glmtune's to remove (a legacy run is refused by :func:`check_owned`).
    """
    claimed = _claimed(output_dir)
    if not claimed:
        return []
    found = []
    for child in output_dir.iterdir():
        name = child.name
        if (name in claimed or CHECKPOINT_RE.match(name) or RESUMED_CONFIG_RE.match(name)
                or (name.startswith(TMP_PREFIX) and child.is_dir())):
            found.append(child)
    return sorted(found, key=lambda p: p.name == MANIFEST)  # the manifest last: an interrupted removal can go on


def foreign_files(output_dir: Path) -> list[Path]:
    """Files inside the run's own folders that glmtune does not write (the user's, put there later)."""
    found = []
    for path in run_artifacts(output_dir):
        if path.is_dir() and not path.is_symlink():
            for root, _, files in os.walk(path):
                found += [Path(root, n) for n in files if not OWN_FILE_RE.match(n)]
    return sorted(found)


def _few(paths: list, base: Path) -> str:
    names = [str(Path(p).relative_to(base)) if Path(p).is_absolute() else str(p) for p in paths]
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


# The web UI writes its launch files (webui-train.yaml, webui-process.json, webui-console.log) into the run
# folder before `glmtune train` starts there: they are glmtune's, and never removed by an overwrite.
LAUNCHER_PREFIX = "webui-"


def check_owned(output_dir: Path, if_exists: str) -> None:
    """Refuse a non-empty folder glmtune did not create a run in (no ``.glmtune-run.json``).

    Writing there would overwrite the user's own ``config.yaml``, ``loss.png``, ... . A run from
    before the manifest (``checkpoint-N`` folders holding ``trainer_state.json``) may be resumed or
    refused, but not overwritten: nothing says which of its files are glmtune's.
    """
    if not output_dir.is_dir() or (output_dir / MANIFEST).is_file():
        return
    entries = sorted(p.name for p in output_dir.iterdir()
                     if p.name != LOCK_FILE and not p.name.startswith(LAUNCHER_PREFIX))
    if not entries:
        return
    if checkpoints(output_dir):
        if if_exists == "overwrite":
            raise ConfigError(f"output.dir {output_dir} holds a run of an older glmtune (no {MANIFEST}), so "
                              "output.if_exists=overwrite cannot tell its files from yours; delete it yourself, "
                              "resume it with training.resume=yes, or choose a new, empty output.dir")
        return
    raise ConfigError(f"output.dir {output_dir} is not empty and is not a glmtune run folder (it holds "
                      f"{_few(entries, output_dir)}); glmtune does not write into other folders, so nothing "
                      "was changed. Choose a new or empty output.dir, e.g. output.dir=runs/NAME")


def remove_run(output_dir: Path) -> None:
    """Delete a previous run's artifacts, never anything else in the folder (nor the lock we hold)."""
    foreign = foreign_files(output_dir)
    if foreign:
        raise ConfigError(f"output.if_exists=overwrite: {output_dir} holds files glmtune did not write inside "
                          f"its run folders ({_few(foreign, output_dir)}); nothing was deleted. Move them out, "
                          "or choose a new output.dir")
    for path in run_artifacts(output_dir):
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def check_overwrite_target(output_dir: Path, protected: dict[str, Path]) -> None:
    """Refuse overwrite in a folder that is, or contains, the working folder, the data or the model."""
    out = output_dir.resolve()
    for what, path in {"the working folder": Path.cwd(), **protected}.items():
        path = path.resolve()
        if path == out or out in path.parents:
            raise ConfigError(f"output.dir {output_dir} {'is' if path == out else 'contains'} {what} ({path}); "
                              "output.if_exists=overwrite there could delete it. Use a run folder of its own, "
                              "e.g. output.dir=runs/NAME")


def prepare_output(output_dir: Path, if_exists: str, resume: str | None) -> Path | None:
    """Apply the existing-run policy; return the checkpoint to resume from (or None)."""
    check_owned(output_dir, if_exists)
    if resume is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_partial(output_dir)
        return resolve_resume(resume, output_dir)
    if has_run(output_dir):
        if if_exists == "resume":
            remove_partial(output_dir)
            return resolve_resume("auto", output_dir)
        if if_exists == "overwrite":
            remove_run(output_dir)
        else:
            newest = checkpoints(output_dir)
            hint = f" (newest: checkpoint-{newest[-1][0]})" if newest else ""
            raise ConfigError(
                f"output.dir {output_dir} already holds a run{hint}; resume it with training.resume=yes "
                "(official command: add 'yes' or a step number), choose another output.dir, "
                "or set output.if_exists=overwrite to delete what the earlier run wrote"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    return None


def lock_output(output_dir: Path) -> int:
    """Create ``output_dir`` and hold its lock (a file descriptor; close it to release).

    ``flock`` belongs to the open file: the kernel releases it when the
    process ends however it ends (kill -9 included), so a stale lock file never blocks.
    """
    import fcntl  # POSIX only; imported here so the module still imports elsewhere

    check_owned(output_dir, "refuse")  # before the lock file: a refused folder stays as it was
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"output.dir {output_dir} is not writable ({exc.strerror}); choose a writable "
                          "output.dir (or fix the folder's permissions / free the disk)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(f"output.dir {output_dir} is in use by another glmtune process (pid {holder}); wait "
                          "for it to finish or stop it, or choose another output.dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def remove_partial(output_dir: Path) -> None:
    """Delete folders an interrupted save left behind (never a complete checkpoint)."""
    for child in output_dir.iterdir():
        if child.name.startswith(TMP_PREFIX) and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` (and the folder entries) to disk before it is renamed."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open folders; the rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_folder(tmp: Path, final: Path) -> Path:
    """Atomically publish ``tmp`` as ``final`` (replacing an older ``final`` of the same name)."""
    fsync_tree(tmp)
    if final.exists():
        # Same step saved twice (e.g. an interrupt right after a periodic save): keep the newer.
        old = final.with_name(f"{TMP_PREFIX}old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _fsync_dir(final.parent)
    return final
