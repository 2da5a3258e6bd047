"""``run_training(cfg)``: config in, trained result and run folder out (layout: :mod:`.layout`).

Order matters for the user's time: the Trainer's arguments, the output
policy, the tokenizer and the data are checked before the (possibly 12 GB)
model is loaded. Under torchrun each process loads the model on its own
device (``args.device``), and only the world process zero writes files.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from transformers import set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback as HFProgress

from ..config import ConfigError, TrainConfig, missing_model_message, save_config
from ..config.schema import keeps_attention
from ..files import apply_umask
from .callbacks import JsonlLogCallback, OfficialEvalSchedule, ProgressCallback, StopOnSignalCallback
from .deepspeed import check_resume_engine, gather_zero3_trained, is_zero3, load_zero3_base, zero3_enabled
from .distributed import ShardPlan, gather_trained, is_sharded, meta_model, shard, shard_plan, unsharded_copy
from .evaluation import GenerationEval, eval_settings
from .guards import LossGuard
from .memory import check_memory_options, load_base, offload_activations
from .layout import (FINAL_DIR, LOG_FILE, TMP_PREFIX, check_overwrite_target, claim_run_names, commit_folder,
                     lock_output, prepare_output)
from .plots import plot_losses
from .resume import check_resume_config, check_resume_data, finished, record_data_files
from .setup import Precision, cast_trainable_to_fp32, reporting, resolve_precision, training_arguments, weights_device
from .trainer import WRITE_ERRORS, GlmTrainer, TrainingError, save_failure, write_json
from ..data import prepare_splits, make_collator, training_dataset
from ..methods import prepare, format_parameter_counts, trainable_parameter_counts
from ..models import SHAPES, write_generation_config
from ..models.checkpointing import checkpointing_kwargs
from ..models.packed_attention import enable_packed_attention
from ..families import load_tokenizer


@dataclass
class TrainResult:
    """What a run produced."""

    output_dir: Path
    final_dir: Path | None
    """``OUTPUT/final`` (None when the run was interrupted before the end)."""
    final_loss: float | None
    """Last logged training loss."""
    global_step: int
    metrics: dict = field(default_factory=dict)
    """Last eval metrics (``eval_loss``, ``eval_rouge-1``, ...) and test metrics (``test_rouge-1``, ...)."""
    interrupted: str | None = None
    """Name of the signal that stopped the run early (SIGINT/SIGTERM), else None."""
    trainable_params: int = 0
    total_params: int = 0
    model: object = field(default=None, repr=False)
    """The trained model in memory (method applied, eval mode), e.g. to chat right away."""


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def load_inputs(cfg: TrainConfig, quiet: bool):
    """Tokenizer and encoded splits (fails on bad data before any model is loaded)."""
    if cfg.model.path not in SHAPES and not Path(cfg.model.path).is_dir():
        raise ConfigError(missing_model_message(cfg.model.path, Path(cfg.model.path).absolute()))
    tokenizer_path = cfg.model.tokenizer or cfg.model.path
    if not Path(tokenizer_path).exists():
        raise ConfigError(f"model.path {cfg.model.path!r} is a named shape (random weights) and has no tokenizer; "
                          "set model.tokenizer to a folder holding tokenizer.model")
    tokenizer = load_tokenizer(tokenizer_path, family=cfg.model.family or None)
    splits = prepare_splits(cfg.data, tokenizer, base_dir=cfg.data.data_dir)
    if splits.train is None or len(splits.train) == 0:
        raise ConfigError("the training split is empty after preprocessing; see the data report "
                          "(glmtune data check) for what was dropped")
    _say(splits.report.format(), quiet)
    return tokenizer, splits


def load_prepared(cfg: TrainConfig, precision: Precision, tokenizer, device: str, plan: ShardPlan | None = None):
    """The base model on ``device``, prepared by the method, trainable weights in fp32, checkpointing on if asked.

    ``plan`` (FSDP2, :mod:`.distributed`): only the first rank reads the weights, the model is then sharded.
    """
    vocab = _vocab_size(cfg, tokenizer)
    # Seeded before any weight is created: LoRA matrices and P-Tuning prefixes are initialised by prepare(),
    # before the Trainer seeds (it is built after the model), so training.seed must hold from here.
    set_seed(cfg.training.seed)
    if plan is not None and not plan.loads_weights:
        model = meta_model(cfg.model.path, precision.storage, vocab)  # filled from the first rank by shard()
    elif zero3_enabled():  # DeepSpeed ZeRO-3: constructed partitioned, no rank holds it whole (.deepspeed)
        model = load_zero3_base(cfg, vocab)
    else:
        model = load_base(cfg, precision, device, vocab)  # quantized (QLoRA) when model.quantization says so
    model.config.use_cache = False  # no KV cache in training: it only costs memory
    prepared = prepare(model, cfg.method.name, cfg.method.options)
    cast_trainable_to_fp32(prepared.model)
    if cfg.data.packs:  # packed rows: causal attention per sample, no dense (L x L) mask
        enable_packed_attention(prepared.model)
    if cfg.training.gradient_checkpointing:
        # Non-reentrant; where chosen, the recompute keeps each layer's attention output (.models.checkpointing).
        kwargs = checkpointing_kwargs(keeps_attention(cfg.training, precision.device))
        prepared.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs,
                                                       every_n_layers=cfg.training.checkpoint_every_n_layers)
    if cfg.training.offload_activations:
        offload_activations(prepared.model, device)
    if plan is not None:
        shard(prepared.model, plan, device)
    return prepared


def _vocab_size(cfg: TrainConfig, tokenizer) -> int | None:
    return tokenizer.vocab_size if cfg.model.path in SHAPES else None


def unsharded_for_saving(cfg: TrainConfig, precision: Precision, tokenizer, prepared):
    """What the first rank saves: ``prepared`` itself, or under FSDP / ZeRO-3 a meta copy holding the gathered
    trained weights (every rank must call this: the gather is collective; other ranks get ``prepared`` back)."""
    if is_zero3(prepared.model):
        trained = gather_zero3_trained(prepared.model)
    elif is_sharded(prepared.model):
        trained = gather_trained(prepared.model)
    else:
        return prepared
    if not trained:
        return prepared
    skeleton = prepare(meta_model(cfg.model.path, precision.storage, _vocab_size(cfg, tokenizer)),
                       cfg.method.name, cfg.method.options)
    cast_trainable_to_fp32(skeleton.model)
    unsharded_copy(skeleton.model, trained)
    return skeleton


def _may_evaluate(cfg: TrainConfig) -> bool:
    return bool(cfg.data.val_file or cfg.data.val_size) and cfg.evaluation.strategy != "no"


def build_trainer(cfg: TrainConfig, prepared, tokenizer, splits, precision: Precision, out: Path, args):
    """The Trainer; ``args`` (built before the model load) is rebuilt only if validation turned out empty."""
    validation = splits.validation
    if validation is not None and cfg.evaluation.max_eval_samples:
        validation = validation.select(range(min(len(validation), cfg.evaluation.max_eval_samples)))
    has_eval = validation is not None and len(validation) > 0 and cfg.evaluation.strategy != "no"
    if has_eval != _may_evaluate(cfg):
        args = training_arguments(cfg, precision, str(out), has_eval)
    generation = None
    if has_eval and cfg.evaluation.generate and cfg.evaluation.max_samples > 0:
        generation = GenerationEval(splits.conversations("validation"), tokenizer, out / "eval",
                                    eval_settings(cfg, cfg.evaluation.max_samples), write=args.should_save)
    trainer = GlmTrainer(
        model=prepared.model,
        args=args,
        data_collator=make_collator(cfg.data, pad_id=tokenizer.pad_token_id),
        train_dataset=training_dataset(splits.train, cfg.data),
        eval_dataset=validation if has_eval else None,
        prepared=prepared,
        generation_eval=generation,
        saving_copy=partial(unsharded_for_saving, cfg, precision, tokenizer, prepared),
    )
    return trainer


def _attach_callbacks(trainer: GlmTrainer, out: Path, quiet: bool):
    for cb in (PrinterCallback, HFProgress):
        trainer.remove_callback(cb)
    log = JsonlLogCallback(out / LOG_FILE, trainer)
    stopper = StopOnSignalCallback()
    for cb in (OfficialEvalSchedule(), log, ProgressCallback(log, enabled=not quiet), stopper):
        trainer.add_callback(cb)
    if trainer.generation_eval is not None:
        trainer.generation_eval.should_stop = lambda: stopper.stop_requested
        trainer.generation_eval.progress = not quiet
    return log, stopper


def _protected_paths(cfg: TrainConfig, config_file: Path | None) -> dict[str, Path]:
    """What an overwrite must never reach: the config file run, the data files and the model/tokenizer folders."""
    base = Path(cfg.data.data_dir or ".")
    files = [cfg.data.train_file, cfg.data.val_file, cfg.data.test_file, *cfg.data.train_files]
    found = {f"the data file {name}": base / name for name in files if name}
    if config_file is not None:
        found[f"the config file {config_file}"] = Path(config_file)
    for what, path in (("the model folder", cfg.model.path), ("the tokenizer folder", cfg.model.tokenizer)):
        if path and Path(path).exists():
            found[what] = Path(path)
    return found


@dataclass
class _Run:
    """A run folder opened for writing: arguments, lock, checkpoint to resume from."""

    cfg: TrainConfig
    out: Path
    precision: Precision
    args: object
    quiet: bool
    resume_from: Path | None = None
    lock: int | None = None

    def close(self) -> None:
        if self.lock is not None:
            os.close(self.lock)  # releases the flock
            self.lock = None


def _open_run(cfg: TrainConfig, quiet: bool, config_file: Path | None = None) -> _Run:
    """Arguments, then the run folder: locked, existing-run policy applied, resume checked (no model yet)."""
    out = Path(cfg.output.dir)
    precision = resolve_precision(cfg)
    check_memory_options(cfg)  # bitsandbytes present for QLoRA / 8-bit optimizers, before anything loads
    args = training_arguments(cfg, precision, str(out), _may_evaluate(cfg))
    run = _Run(cfg, out, precision, args, quiet or not args.should_save)
    if cfg.output.if_exists == "overwrite":
        check_overwrite_target(out, _protected_paths(cfg, config_file))
    with args.main_process_first(local=False, desc="output folder"):
        if args.should_save:
            run.lock = lock_output(out)  # one writer per folder; the world process zero writes
        try:
            run.resume_from = prepare_output(out, cfg.output.if_exists, cfg.training.resume)
            if args.should_save:
                claim_run_names(out)
            if run.resume_from is not None:
                check_resume_engine(run.resume_from, cfg.training.deepspeed)  # before anything is recorded
                changes = check_resume_config(cfg, run.resume_from, write=args.should_save)
                changes += check_resume_data(cfg, run.resume_from, write=args.should_save)
                if changes:
                    _say(f"resuming with changed options (training.resume_allow_changes): {'; '.join(changes)}",
                         run.quiet)
        except BaseException:
            run.close()
            raise
    return run


def _prepare_run(run: _Run):
    """Data and model (under torchrun the local main builds the data cache first; process zero writes)."""
    cfg, out, args, quiet = run.cfg, run.out, run.args, run.quiet
    with args.main_process_first(desc="data preparation"):
        tokenizer, splits = load_inputs(cfg, quiet)
    if args.should_save and run.resume_from is None:  # a resumed run keeps its recorded config and report
        save_config(cfg, out / "config.yaml")
        record_data_files(cfg, out)
        write_json(out / "data_report.json", splits.report.to_dict())
    prepared = load_prepared(cfg, run.precision, tokenizer, weights_device(run.precision, args),
                             shard_plan(cfg, run.precision.compute))
    _say(f"{cfg.method.name}: {format_parameter_counts(prepared.model)}", quiet)
    _say(f"device {args.device}, compute {run.precision.compute}, frozen weights {run.precision.storage}", quiet)
    if reporting(cfg)[1]:  # e.g. TensorBoard off because it is not installed: said once, not silently dropped
        _say(reporting(cfg)[1], quiet)
    trainer = build_trainer(cfg, prepared, tokenizer, splits, run.precision, out, args)
    return trainer, prepared, tokenizer, splits


def _already_done(run: _Run) -> TrainResult | None:
    """A resume of a run that already reached its last step: say so and do nothing."""
    final = run.out / FINAL_DIR
    if run.resume_from is None:
        if run.cfg.training.resume is None or not final.is_dir():
            return None
        step, where = 0, f"{FINAL_DIR}/ exists and no checkpoint is left to resume from"  # save_steps 0
    else:
        step = finished(run.cfg, run.resume_from)
        if step is None:
            return None
        where = f"{run.resume_from.name} reached the last step, {step}"
    _say(f"the run in {run.out} is complete ({where}); nothing to do. To train further, raise "
         "training.max_steps and set training.resume_allow_changes=true", run.quiet)
    return TrainResult(run.out, final if final.is_dir() else None, None, step)


def run_training(cfg: TrainConfig, *, quiet: bool = False, callbacks: list | None = None,
                 config_file: Path | None = None) -> TrainResult:
    """Train as ``cfg`` says; see :mod:`glmtune.train.layout` for the run folder.

    ``callbacks``: extra ``transformers.TrainerCallback`` objects. Raises
    :class:`ConfigError` / ``DataError`` / ``MethodError`` for bad input (before
    the model is loaded where possible) and :class:`TrainingError` when the
    loss stops being finite or a checkpoint cannot be written or read back.
    The output folder is locked for the whole run. ``config_file``: the YAML the config came
    from, which an overwrite must not delete.
    """
    run = _open_run(cfg, quiet, config_file)
    try:
        return _already_done(run) or _train(run, callbacks)
    finally:
        run.close()


def _train(run: _Run, callbacks: list | None) -> TrainResult:
    cfg, out = run.cfg, run.out
    trainer, prepared, tokenizer, splits = _prepare_run(run)
    quiet = run.quiet

    trainable, total = trainable_parameter_counts(prepared.model)
    for callback in callbacks or []:
        trainer.add_callback(callback)  # before ours: a stop they request is seen at the same step
    log, stopper = _attach_callbacks(trainer, out, quiet)
    if cfg.training.loss_guard:
        trainer.add_callback(LossGuard())  # after the log callback: the collapsed loss is still logged
    if run.resume_from is not None:
        _say(f"resuming from {run.resume_from}", quiet)
    stopper.install()
    try:
        _fit(trainer, run.resume_from)
        result = TrainResult(out, None, log.last_loss, trainer.state.global_step,
                             trainable_params=trainable, total_params=total, model=prepared.model.eval())
        result.metrics.update(_last_eval(trainer))
        # A signal after the last step still gets the result saved (the test evaluation then stops at once).
        if stopper.received is None or trainer.state.global_step >= trainer.state.max_steps:
            saving = unsharded_for_saving(cfg, run.precision, tokenizer, prepared)
            result.final_dir = _save_final(trainer, saving, tokenizer, out)
            _say(f"saved {cfg.method.name} result to {result.final_dir}", quiet)
            result.metrics.update(_test_metrics(cfg, trainer, splits, tokenizer, out, stopper, quiet))
    finally:
        stopper.uninstall()
    if stopper.received is not None:
        result.interrupted = signal.Signals(stopper.received).name
        if result.final_dir is None:
            _say(f"stopped by {result.interrupted} at step {result.global_step}; resume with training.resume=yes "
                 f"(official command: add 'yes')", quiet)
        else:
            _say(f"stopped by {result.interrupted} after the last step; the result is saved in {result.final_dir} "
                 "(test predictions skipped: glmtune eval scores it)", quiet)
    if cfg.output.plots and trainer.args.should_save:
        plot_losses(out)
    return result


def _fit(trainer: GlmTrainer, resume_from: Path | None) -> None:
    """``trainer.train``, with a checkpoint that cannot be read back turned into a clear error."""

    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except pickle.UnpicklingError as exc:
        # torch.load(weights_only=True) refused an object in optimizer.pt / scheduler.pt / rng_state.pth.
        reason = " ".join(str(exc).split())[:200]
        raise TrainingError(f"cannot resume from {resume_from}: a state file there holds objects other than "
                            f"tensors and was refused, since loading it could run code ({reason}); resume from "
                            "a checkpoint glmtune wrote (training.resume=N) or start fresh in another "
                            "output.dir") from None


def _save_final(trainer: GlmTrainer, prepared, tokenizer, out: Path) -> Path:
    tmp, final = out / f"{TMP_PREFIX}{FINAL_DIR}", out / FINAL_DIR
    if trainer.args.should_save:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            prepared.save(tmp)
            tokenizer.save_pretrained(tmp)
            if prepared.method == "full":
                write_generation_config(tmp, tokenizer)
        except WRITE_ERRORS as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise TrainingError(save_failure(out, FINAL_DIR, exc)) from None
        commit_folder(tmp, final)
        apply_umask(final)  # safetensors writes 0600; the run's other files follow the umask
    trainer.accelerator.wait_for_everyone()  # no process goes on (test eval, exit) before final/ exists
    return final


def _last_eval(trainer: GlmTrainer) -> dict:
    metrics: dict = {}
    for entry in trainer.state.log_history:
        metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})
    return metrics


def _test_metrics(cfg: TrainConfig, trainer: GlmTrainer, splits, tokenizer, out: Path, stopper, quiet: bool) -> dict:
    if splits.test is None or not cfg.evaluation.generate:
        return {}
    generation = GenerationEval(splits.conversations("test"), tokenizer, out,
                                eval_settings(cfg, cfg.evaluation.max_test_samples), write=trainer.args.should_save,
                                should_stop=lambda: stopper.stop_requested, progress=not quiet)
    scores = generation.run(trainer.model, "test")
    return {f"test_{k}": v for k, v in scores.items()}


def describe(result: TrainResult) -> str:
    """A short human summary of a result (for the CLI's last lines)."""
    parts = [f"step {result.global_step}"]
    if result.final_loss is not None:
        parts.append(f"loss {result.final_loss:.4f}")
    parts += [f"{k} {v:.4f}" for k, v in result.metrics.items() if isinstance(v, float)]
    return ", ".join(parts)


__all__ = ["TrainResult", "describe", "run_training"]
