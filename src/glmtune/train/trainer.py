"""The one training loop: Hugging Face's ``Trainer``, minimally subclassed.

What the subclass changes, and why:

* saving goes through the method (``Prepared.save``), so a checkpoint holds
  only what the method trains (a LoRA adapter, a P-Tuning prefix), never the
  frozen 12 GB base; P-Tuning's model is a wrapper module, not a
  ``PreTrainedModel``, which HF's own ``_save`` would dump whole;
* resume loads the trained parameters back in place (``_load_from_checkpoint``);
* checkpoints are HF's own (``super()._save_checkpoint``), written in a staging
  folder and renamed when complete (:meth:`GlmTrainer._save_checkpoint`);
* a non-finite loss stops the run at the step it happens, with the likely cause;
* evaluation adds generation metrics (ROUGE/BLEU) to the eval loss;
* real (non-padding) tokens are counted for the tokens/s figure;
* the training loss computes logits only where labels are (:mod:`.loss`; under DeepSpeed ZeRO-3, whose
  per-module gathering allows one ``lm_head`` call per forward, in that one call, unchunked);
* under ZeRO-3 ``save_model`` has the method save the trained weights gathered one at a time
  (:mod:`.deepspeed`), rather than HF's consolidated state dict of the whole model.

Private ``Trainer`` members this touches, each because upstream offers no public hook for it:
``_save`` (where ``save_model`` writes weights: the method's files, not the whole model),
``_load_from_checkpoint`` / ``_load_best_model`` (resume and best-model reload go through the method),
``_get_output_dir`` (``_save_checkpoint`` writes ``checkpoint-N`` straight into it: pointed at a staging
folder while saving), ``_save_rng_state`` / ``_load_optimizer_and_scheduler`` (an FSDP2-sharded model, see
:mod:`.distributed`: transformers saves only the model for it, so the sharded optimizer state, scheduler and RNG
are written and read back here), ``_save_checkpoint`` (only wrapped: ``super()`` then commit, as trl's
``SFTTrainer._save_checkpoint`` wraps it), ``_get_learning_rate`` (the rate in the non-finite-loss message),
``_get_train_sampler`` (packed rows get :class:`~glmtune.data.sampler.BalancedSampler`; transformers' own
``train_sampling_strategy`` choices are for padded samples and still apply when set), and the public
``get_train_dataloader`` wrapped to register that sampler with accelerate (:func:`expose_sampler`).
"""

from __future__ import annotations

from ..errors import GlmtuneError

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer import SCHEDULER_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from safetensors import SafetensorError

from ..data import PackedDataset
from ..data.sampler import BalancedSampler, labelled_weight, row_work
from ..files import apply_umask
from .layout import STATE_FILE as TRAINER_STATE_NAME
from .deepspeed import is_zero3
from .distributed import has_sharded_state, is_sharded, load_sharded_model, load_sharded_optimizer, save_sharded
from .layout import TMP_PREFIX, checkpoints, commit_folder
from .loss import answer_only_loss, find_lm_head
from ..methods import MethodError, trainable_parameter_counts


# What writing a checkpoint raises when the disk or folder fails: the OS's error, torch.save's RuntimeError
# ("PytorchStreamWriter failed writing file"), safetensors' own error ("I/O error: No space left on device").
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


class TrainingError(GlmtuneError, RuntimeError):
    """Training cannot go on (non-finite loss, ...); the message says where and what to try."""


def count_real_tokens(inputs: dict) -> int:
    """Non-padding tokens of a batch (padded: the 2D attention mask; packed rows: the non-pad ids)."""
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return int(mask.sum())
    ids = inputs.get("input_ids")
    # Packed rows: the only padding is the pad tail (id 0, <unk>, which SentencePiece's byte fallback never emits).
    return int((ids != 0).sum()) if isinstance(ids, torch.Tensor) else 0


def nonfinite_cause(args, optimizer_lr: float | None) -> str:
    """The most likely reason for a NaN/inf loss under these settings."""
    if args.fp16:
        return ("fp16 overflow: train in bf16 if the GPU supports it (training.precision=bf16), "
                "or in fp32 (training.precision=fp32)")
    if optimizer_lr is not None and optimizer_lr > 1e-3:
        return f"learning rate {optimizer_lr:g} is high for this model; try 10x lower (training.learning_rate)"
    return ("diverging weights or an invalid batch: lower training.learning_rate, keep training.max_grad_norm > 0, "
            "and check the data (glmtune data check)")


class GlmTrainer(Trainer):
    """``Trainer`` that saves/loads through the fine-tuning method and adds generation metrics."""

    def __init__(self, *args, prepared=None, generation_eval=None, saving_copy=None, **kwargs):
        self.prepared = prepared
        self.generation_eval = generation_eval
        self.saving_copy = saving_copy
        """Callable giving what the first rank saves for a partitioned (ZeRO-3) model; collective, every rank calls it."""
        self.real_tokens = 0
        self.eval_seconds = 0.0
        """Wall time spent evaluating (tokens/s leaves it out)."""
        self._staging: Path | None = None
        super().__init__(*args, **kwargs)
        self.lm_head = find_lm_head(self.model)
        self.zero3 = is_zero3(self.model)

    # -- training --------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        """Packed rows in a random order with about the same work in every step (:mod:`glmtune.data.sampler`)."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not isinstance(dataset, PackedDataset) or self.args.train_sampling_strategy != "random":
            return super()._get_train_sampler(train_dataset)
        weight = model_labelled_weight(self.model)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        rows, batches = step_geometry(self.args, self.accelerator.split_batches)
        return BalancedSampler(row_work(dataset.tokens, dataset.labelled, weight), rows, batches, seed=seed)

    def get_train_dataloader(self):
        return expose_sampler(super().get_train_dataloader())

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.real_tokens += count_real_tokens(inputs)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            step = self.state.global_step + 1
            lr = self._get_learning_rate() if self.lr_scheduler is not None else None
            raise TrainingError(
                f"loss is {float(loss)} at step {step} (epoch {self.state.epoch or 0:.2f}); likely cause: "
                f"{nonfinite_cause(self.args, lr)}. Nothing after the last checkpoint was saved."
            )
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Training loss with logits only at labelled positions (:mod:`.loss`); evaluation unchanged."""
        if (return_outputs or "labels" not in inputs or not model.training or self.label_smoother is not None
                or self.args.n_gpu > 1):
            # n_gpu > 1 is nn.DataParallel (several GPUs without torchrun): its replicas share the lm_head
            # hook, so each thread would see the whole batch's mask. transformers' own loss handles it.
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not self.model_accepts_loss_kwargs:
            num_items_in_batch = None  # HF then divides by the accumulation steps itself
        # ZeRO-3 gathers each module's partition once per forward and releases it once per backward: a second
        # lm_head call after the forward breaks that bookkeeping ("active_backward_submodules is empty").
        loss = answer_only_loss(model, self.lm_head, inputs, num_items_in_batch, one_head_call=self.zero3)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch is summed over processes and DDP averages gradients: as HF does.
            loss = loss * self.accelerator.num_processes
        return loss

    # -- saving and loading ------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = Path(output_dir or self.args.output_dir)
        if not self.args.should_save:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if not is_sharded(self.model):  # a sharded model's state is written by every rank (_save_sharded_state)
            self.prepared.save(output_dir)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Under ZeRO-3 the method saves the trained weights gathered one at a time (``saving_copy``), not HF's
        consolidated state dict, which for P-Tuning / freeze would gather the whole frozen base to one rank."""
        if self.saving_copy is None or not self.zero3:
            return super().save_model(output_dir, _internal_call)
        saving = self.saving_copy()  # every rank: the gather is collective
        if self.args.should_save:
            output_dir = Path(output_dir or self.args.output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            saving.save(output_dir)

    def _get_output_dir(self, trial) -> str:
        # Private HF hook, touched because HF's _save_checkpoint writes checkpoint-N straight into the folder
        # this returns (no staging of its own): while we save, it returns our staging folder, so super()
        # writes the whole checkpoint there and _save_checkpoint renames it when every file is done.
        if self._staging is not None:
            return str(self._staging)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """HF's checkpoint (``super()``: same files, bookkeeping, ``push_to_hub``), staged, then committed.

        Every process writes into the staging folder (its RNG state, DeepSpeed
        shards); the world process zero renames ``checkpoint-N`` out of it only
        after all of them are done, so a ``checkpoint-N`` is never missing a file.
        """
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / f"{TMP_PREFIX}save"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # a crash's leftover
        self.accelerator.wait_for_everyone()  # nobody writes before the old leftover is gone
        self._staging = staging
        try:
            super()._save_checkpoint(model, trial)
            if is_sharded(self.model):
                self._save_sharded_state(staging / name)
        except WRITE_ERRORS as exc:  # disk full, folder made read-only, quota, ...
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            raise TrainingError(save_failure(run_dir, name, exc)) from None
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every rank's files are in the staging folder
        if self.args.should_save:
            self._commit_checkpoint(staging, run_dir, name)
        self.accelerator.wait_for_everyone()  # the checkpoint is published for every rank

    def _save_sharded_state(self, folder: Path) -> None:
        """FSDP2: trained weights and optimizer state sharded (every rank), scheduler (one), RNG (each)."""
        save_sharded(self.model, self.optimizer, folder)
        self._save_rng_state(str(folder))
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), folder / SCHEDULER_NAME)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or not is_sharded(self.model):
            return super()._load_optimizer_and_scheduler(checkpoint)
        load_sharded_optimizer(self.model, self.optimizer, Path(checkpoint))
        self.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / SCHEDULER_NAME, weights_only=True))

    def _commit_checkpoint(self, staging: Path, run_dir: Path, name: str) -> None:
        final = commit_folder(staging / name, run_dir / name)
        apply_umask(final)  # safetensors writes 0600; the run's other files follow the umask
        shutil.rmtree(staging, ignore_errors=True)
        best = self.state.best_model_checkpoint
        if best and Path(best).parent == staging:  # HF noted the staged path: record the published one
            self.state.best_model_checkpoint = str(final)
            self.state.save_to_json(str(final / f"{TRAINER_STATE_NAME}.tmp"))
            os.replace(final / f"{TRAINER_STATE_NAME}.tmp", final / TRAINER_STATE_NAME)
        # The rotation super() did ran in the staging folder (nothing to rotate there): rotate the run's.
        rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                           best_model_checkpoint=self.state.best_model_checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resume: the method loads what it saved back in place (exact: trained weights are saved in fp32)."""
        sharded_model, sharded_files = is_sharded(self.model), has_sharded_state(resume_from_checkpoint)
        if sharded_model != sharded_files:
            raise TrainingError(sharding_mismatch(resume_from_checkpoint, sharded_files))
        try:
            if sharded_model:
                return load_sharded_model(self.model, Path(resume_from_checkpoint))
            self.prepared.load_state(resume_from_checkpoint)
        except MethodError as exc:
            raise TrainingError(f"cannot resume from {resume_from_checkpoint}: {exc}; resume with the config "
                                "that wrote it, or start fresh") from None
        except RuntimeError as exc:  # torch's load_state_dict: "size mismatch for ..." (e.g. LoRA rank changed)
            detail = " ".join(str(exc).split())[:300]
            raise TrainingError(f"cannot resume from {resume_from_checkpoint}: its weights do not fit this model "
                                f"({detail}); the method options differ from the run that wrote it: resume with "
                                "that run's config.yaml, or start fresh in another output.dir") from None

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    # -- evaluation --------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        started = time.perf_counter()
        try:
            scores = {}
            if self.generation_eval is not None and eval_dataset is None:
                # Generation first: super().evaluate ends with on_evaluate, which acts on a stop request
                # that arrived while generating (the generation itself stops at its next token).
                scores = self.generation_eval.run(self.model, f"step-{self.state.global_step}")
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            extra = {f"{metric_key_prefix}_{k}": v for k, v in scores.items() if not math.isnan(v)}
            if extra:
                self.log(extra)
                metrics.update(extra)
            return metrics
        finally:
            self.eval_seconds += time.perf_counter() - started


def model_labelled_weight(model) -> float:
    """:func:`~glmtune.data.sampler.labelled_weight` of ``model`` (whole tensor sizes under ZeRO-3, FSDP, 4-bit)."""
    head = find_lm_head(model).weight
    return labelled_weight(getattr(head, "ds_numel", None) or head.numel(), trainable_parameter_counts(model)[1])


def step_geometry(args, split_batches: bool) -> tuple[int, int]:
    """(rows per device batch, device batches per optimizer step) of the Trainer's train loader.

    accelerate hands whole loader batches to the processes in turn, or (``split_batches``) a slice of each
    batch to every process; under nn.DataParallel (``n_gpu`` > 1) each GPU takes a slice of the batch.
    """
    world, accumulation = max(1, args.world_size), args.gradient_accumulation_steps
    if split_batches:
        return max(1, args.train_batch_size // world), accumulation * world
    return args.per_device_train_batch_size, accumulation * world * max(1, args.n_gpu)


def expose_sampler(loader):
    """Register a :class:`BalancedSampler` with accelerate's loader, as accelerate registers its own sampler.

    On several processes the sampler sits under accelerate's ``BatchSamplerShard``, where ``set_epoch`` (and so
    the epoch a resumed run skips into) reaches only a sampler registered with ``set_sampler``: without this, a
    run resumed in the middle of epoch 2 on N processes would replay epoch 1's order.
    """
    inner = getattr(loader.batch_sampler, "batch_sampler", loader.batch_sampler)
    sampler = getattr(inner, "sampler", None)
    if isinstance(sampler, BalancedSampler) and hasattr(loader, "set_sampler"):
        loader.set_sampler(sampler)
    return loader


def save_failure(run_dir: Path, name: str, exc: Exception) -> str:
    """One line for a checkpoint that could not be written: the OS's reason, what is safe, the fix."""
    reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:200]
    newest = checkpoints(run_dir)
    kept = f"the previous checkpoint {newest[-1][1].name} is intact" if newest else "no earlier checkpoint exists"
    return (f"could not write {name} in {run_dir} ({reason}); {kept}. Free disk space or fix the folder's "
            "permissions, then resume with training.resume=yes")


def sharding_mismatch(checkpoint: str, sharded_files: bool) -> str:
    if sharded_files:
        return (f"cannot resume from {checkpoint}: it was written by an FSDP run (sharded state in it), and this run "
                "is not sharded; resume with training.fsdp.enabled=true under torchrun with 2 or more processes")
    return (f"cannot resume from {checkpoint}: it was written without FSDP, and this run shards the model; resume "
            "with training.fsdp.enabled=false (DDP or one process), as the run that wrote it")


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
