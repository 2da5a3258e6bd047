"""The one training loop: Hugging Face's ``Trainer``, minimally subclassed.

What the subclass changes, and why:

* saving goes through the method (``Prepared.save``), so a checkpoint holds
  only what the method trains (a LoRA adapter, a P-Tuning prefix), never the
  frozen 12 GB base; P-Tuning's model is a wrapper module, not a
  ``PreTrainedModel``, which HF's own ``_save`` would dump whole;
* resume loads the trained parameters back in place (``_load_from_checkpoint``);
* checkpoints are written to a temporary folder and renamed when complete;
* a non-finite loss stops the run at the step it happens, with the likely cause;
* evaluation adds generation metrics (ROUGE/BLEU) to the eval loss;
* real (non-padding) tokens are counted for the tokens/s figure;
* the training loss computes logits only where labels are (:mod:`.loss`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer
from transformers.trainer_utils import rotate_checkpoints

from .layout import STATE_FILE, TMP_PREFIX, commit_folder
from .loss import answer_only_loss, find_lm_head

TRAINABLE_FILE = "trainable_state.safetensors"
# Keep an exact fp32 copy of trained parameters in checkpoints when they are small next to the model:
# resume is then bit-exact whatever format (and dtype) the method exports.
EXACT_COPY_MAX_FRACTION = 0.2


class TrainingError(RuntimeError):
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

    def __init__(self, *args, prepared=None, generation_eval=None, **kwargs):
        self.prepared = prepared
        self.generation_eval = generation_eval
        self.real_tokens = 0
        super().__init__(*args, **kwargs)
        self.lm_head = find_lm_head(self.model)

    # -- training --------------------------------------------------------------
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
        if return_outputs or "labels" not in inputs or not model.training or self.label_smoother is not None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not self.model_accepts_loss_kwargs:
            num_items_in_batch = None  # HF then divides by the accumulation steps itself
        loss = answer_only_loss(model, self.lm_head, inputs, num_items_in_batch)
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
        self.prepared.save(output_dir)

    def _save_checkpoint(self, model, trial) -> None:
        """HF's checkpoint (weights, optimizer, scheduler, scaler, RNG, state), written atomically."""
        run_dir = Path(self.args.output_dir)
        name = f"checkpoint-{self.state.global_step}"
        tmp = run_dir / f"{TMP_PREFIX}{name}"
        if self.args.should_save:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        self.store_flos()
        self.save_model(str(tmp), _internal_call=True)
        if self.args.should_save:
            self._save_trainable_copy(tmp)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(tmp))
            self._save_scaler(str(tmp))
            self._save_rng_state(str(tmp))
        if self.args.should_save:
            self.state.save_to_json(str(tmp / STATE_FILE))  # last file: marks the checkpoint complete
            commit_folder(tmp, run_dir / name)
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit)

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _save_trainable_copy(self, folder: Path) -> None:
        trainable = self._trainable()
        n_trainable = sum(p.numel() for p in trainable.values())
        n_total = sum(p.numel() for p in self.model.parameters())
        if n_trainable <= EXACT_COPY_MAX_FRACTION * n_total:
            state = {n: p.detach().contiguous().cpu() for n, p in trainable.items()}
            save_file(state, str(folder / TRAINABLE_FILE), metadata={"format": "pt"})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        folder = Path(resume_from_checkpoint)
        trainable = self._trainable()
        state = _read_trainable(folder, set(trainable))
        missing = sorted(set(trainable) - set(state))
        if missing:
            raise TrainingError(
                f"{folder}: checkpoint lacks {len(missing)} trained tensors (e.g. {missing[0]}); "
                "was it written by another method or model? Resume with the same config, or start fresh"
            )
        with torch.no_grad():
            for name, param in trainable.items():
                value = state[name]
                if value.shape != param.shape:
                    raise TrainingError(f"{folder}: {name} has shape {tuple(value.shape)}, the model "
                                        f"{tuple(param.shape)}; resume with the config that wrote it")
                param.copy_(value.to(param.dtype))

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    # -- evaluation --------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.generation_eval is not None and eval_dataset is None:
            scores = self.generation_eval.run(self.model, f"step-{self.state.global_step}")
            extra = {f"{metric_key_prefix}_{k}": v for k, v in scores.items() if not math.isnan(v)}
            if extra:
                self.log(extra)
                metrics.update(extra)
        return metrics


def _read_trainable(folder: Path, names: set[str]) -> dict[str, torch.Tensor]:
    """Trained tensors of a checkpoint: the exact copy if present, else matching names in its weights."""
    exact = folder / TRAINABLE_FILE
    if exact.is_file():
        return load_file(str(exact))
    state: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        for name, tensor in load_file(str(path)).items():
            if name in names:
                state[name] = tensor
    return state


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
