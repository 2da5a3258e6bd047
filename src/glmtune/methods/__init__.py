"""Fine-tuning methods: a method prepares the model and says what to save; it never owns a loop.

API (used by the training loop, chat, eval and export)::

    from glmtune.methods import prepare, load_trained, METHODS, MethodError
    prepared = prepare(model, "lora", {"r": 8})        # or LoraOptions(...), or None for defaults
    trainer = Trainer(model=prepared.model, ...)        # only the method's parameters require grad
    print(format_parameter_counts(prepared.model))      # trainable_parameter_counts(model) -> (trainable, total)
    prepared.save(out_dir)                              # final result AND each checkpoint's model part
    prepared.load_state(checkpoint_dir)                 # resume: in place, so optimizer state stays attached
    model = load_trained(load_model(base), out_dir)     # chat / eval / export: re-apply a saved result

* ``METHODS`` (:mod:`.catalog`, the one registry): plain dict name -> :class:`Method`
  (``options_type``, config ``section``, ``aliases``, ``help``, and ``prepare``,
  ``save``, ``load_state`` (resume), ``load`` (apply a saved result)). The
  config schema, its aliases and :func:`load_trained` derive from it; it imports
  no torch. Unknown names raise :class:`MethodError` listing the known ones;
  ``make_options(name, dict)`` rejects unknown option keys with the closest valid name.
* Options dataclasses: :class:`LoraOptions` (r=8, alpha=32, dropout=0.1,
  target="qkv"|"attention"|"all-linear"|[names], use_rslora, use_dora),
  :class:`PrefixOptions` (num_virtual_tokens=128 = official pre_seq_len,
  prefix_projection=False, prefix_hidden_size=None, prefix_dropout=0.1),
  :class:`FreezeOptions` (trainable_layers: last N / first -N, default 2;
  trainable_modules: glob patterns), :class:`FullOptions`.
* ``Prepared.model.forward(input_ids, attention_mask=None, position_ids=None,
  labels=None, **kwargs)`` returns transformers' ``CausalLMOutputWithPast`` whose
  loss is GlmForCausalLM's (``num_items_in_batch`` honoured, so the Trainer's
  gradient-accumulation normalisation is exact).
* Checkpoints: call ``prepared.save(ckpt_dir)`` for the model part (the HF
  Trainer's default ``_save`` would write the whole base model for a P-Tuning
  wrapper) and ``prepared.load_state(ckpt_dir)`` on resume.
* Gradient checkpointing: ``prepared.model.activation_checkpointing_enable()``
  (or the deprecated ``gradient_checkpointing_enable``) works for every method;
  P-Tuning requires non-reentrant checkpointing and says so otherwise.

Saved folder layouts (each also holds ``glmtune_method.json``: method, options, version):

* lora:    ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT format, native module names)
* ptuning: ``prefix_encoder.safetensors`` (key ``transformer.prefix_encoder.embedding.weight``,
  + ``trans.{0,2}.*`` with projection) + ``config.json`` (``pre_seq_len``, ``prefix_projection``,
  base shape) — the official ChatGLM3 format
* freeze:  ``trained_weights.safetensors`` (only the trained tensors, native names)
* full:    a whole native model folder (``config.json`` + safetensors shards), see ``glmtune.models.save_model``

Loading outside training: ``glmtune.load_model(path, adapter=DIR)`` (:mod:`glmtune.api`) calls
:func:`load_trained`, which detects the method from ``glmtune_method.json`` or
the files and calls its ``Method.load``: for LoRA :func:`glmtune.methods.adapters.apply_adapter`
(glmtune/PEFT adapters and official ``query_key_value`` ones, converted
exactly); ``prefix=DIR`` calls
:func:`glmtune.methods.ptuning_io.apply_prefix` (also ``.bin`` prefixes and whole
official P-Tuning checkpoint folders). :func:`merge_adapter` merges LoRA/DoRA for
export and refuses P-Tuning with the options. The P-Tuning model's generation
contract (attention mask over real tokens only, :class:`PrefixCache`) is in
:mod:`glmtune.methods.ptuning`.
"""

from ..lazy import lazy_exports
from .catalog import METHODS, Method, get_method
from .errors import MethodError
from .options import FreezeOptions, FullOptions, LoraOptions, PrefixOptions

# The rest loads on first use (PEP 562): those modules import torch/transformers, and the registry and option
# types above are all that the config layer and `glmtune train --help-config` need.
_LAZY = {
    "apply_adapter": "adapters",
    "merge_adapter": "adapters",
    "PrefixCache": "prefix_cache",
    "PrefixEncoder": "ptuning",
    "PrefixModel": "ptuning",
    "apply_prefix": "ptuning_io",
    "METHOD_FILE": "registry",
    "Prepared": "registry",
    "detect_method": "registry",
    "format_parameter_counts": "registry",
    "load_trained": "registry",
    "make_options": "registry",
    "prepare": "registry",
    "trainable_parameter_counts": "registry",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "METHODS", "METHOD_FILE", "FreezeOptions", "FullOptions", "LoraOptions", "Method", "MethodError",
    "PrefixCache", "PrefixEncoder", "PrefixModel", "PrefixOptions", "Prepared", "apply_adapter",
    "apply_prefix", "detect_method", "format_parameter_counts", "get_method", "load_trained",
    "make_options", "merge_adapter", "prepare", "trainable_parameter_counts",
]
