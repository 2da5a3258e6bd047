"""P-Tuning v2 with the official ChatGLM3 semantics, on transformers' own GLM.

The official model (``modeling_chatglm.py``) keeps a ``PrefixEncoder`` whose
output, viewed as (batch, pre_seq_len, num_layers*2, groups, kv_channels),
gives each layer ``l`` a key (row ``2l``) and a value (row ``2l+1``) prefix.
Those prefixes are not rotated, real tokens keep positions 0..n-1, and every
token attends to the whole prefix. PEFT's prefix tuning numbers tokens from
``P`` and refuses gradient checkpointing; :class:`PrefixModel` does neither.

Calling contract of :class:`PrefixModel` (used by the Trainer, by
``model.generate`` and by step-by-step generation loops)::

    out = model(input_ids, attention_mask=None, position_ids=None,
                cache=None, use_cache=None, labels=None, **kwargs)

* ``attention_mask`` covers the REAL tokens only (past + current, 2D, 1 = keep,
  left padding allowed); the prefix slots are added internally.
* ``position_ids`` default to the official ones: ``cumsum(mask) - 1`` (0 on
  pads), continuing from the past tokens.
* First step: ``cache=None`` (or an empty cache, as ``generate`` passes). With
  ``use_cache=True`` (eval mode) ``out.cache`` is a :class:`PrefixCache`
  holding prefix + tokens (its ``get_seq_length()`` counts the real tokens
  only); pass it back on the next step with the grown ``attention_mask``.
  ``past_key_values`` is accepted as the older name of ``cache``.
* In training mode with gradients on, the prefix cache is read-only and never
  returned, which is what makes gradient checkpointing exact.
* ``labels`` / ``num_items_in_batch``: the loss is GlmForCausalLM's own.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, GlmConfig

from ..models import find_glm
from .errors import MethodError
from .options import PrefixOptions
from .prefix_cache import PrefixCache


def kv_size(config: GlmConfig) -> int:
    """Width of one prefix slot: num_layers * 2 * groups * head_dim (official ``kv_size``)."""
    return config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim


class PrefixEncoder(nn.Module):
    """The official ChatGLM3 ``PrefixEncoder``: same sub-module names, so official keys load as they are."""

    def __init__(self, config: GlmConfig, options: PrefixOptions):
        super().__init__()
        size = kv_size(config)
        self.prefix_projection = options.prefix_projection
        self.embedding = nn.Embedding(options.num_virtual_tokens, size)
        if options.prefix_projection:
            hidden = options.prefix_hidden_size or config.hidden_size
            self.trans = nn.Sequential(nn.Linear(size, hidden), nn.Tanh(), nn.Linear(hidden, size))

    def forward(self, prefix: torch.Tensor) -> torch.Tensor:
        out = self.embedding(prefix)
        return self.trans(out) if self.prefix_projection else out


def packed_segments(position_ids: torch.Tensor) -> torch.Tensor:
    """Sample index of each token of packed rows: a new sample starts where positions do not go up by 1.

    The same rule as transformers' ``masking_utils.find_packed_sequence_indices``.
    """
    first = position_ids[:, :1] - 1
    return (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)


def prefix_mask(mask: torch.Tensor, query_length: int, prefix_length: int, dtype: torch.dtype,
                segments: torch.Tensor | None = None) -> torch.Tensor:
    """Additive 4D mask (batch, 1, q, P + k): every query sees the whole prefix, real keys causally minus pads.

    ``mask`` is the 2D mask of the real tokens (past + current). A float mask
    works with sdpa and eager attention alike, and pad queries still see the
    prefix, so no row is fully masked (no NaN).
    """
    batch, keys = mask.shape
    past = keys - query_length
    q_pos = torch.arange(past, keys, device=mask.device).unsqueeze(1)
    k_pos = torch.arange(keys, device=mask.device).unsqueeze(0)
    allowed = (k_pos <= q_pos).unsqueeze(0) & mask.bool().unsqueeze(1)
    if segments is not None:  # packed rows: no attention across samples (the prefix stays shared)
        allowed &= segments.unsqueeze(2) == segments.unsqueeze(1)
    allowed = torch.cat([allowed.new_ones(batch, query_length, prefix_length), allowed], dim=-1)
    out = torch.zeros(allowed.shape, dtype=dtype, device=mask.device)
    return out.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def is_checkpointing(model: nn.Module) -> bool:
    """Whether activation checkpointing is on (transformers' current name; the floor in pyproject has it)."""
    return model.is_activation_checkpointing


class PrefixModel(nn.Module, GenerationMixin):
    """A GLM causal LM with a trainable P-Tuning v2 prefix (see the module docstring for the contract).

    It is a ``GenerationMixin``, so ``model.generate(...)`` works as on any
    transformers causal LM: the prefix rides in the :class:`PrefixCache` that
    the first forward makes, and generate only ever sees the real tokens.
    """

    main_input_name = "input_ids"
    # The HF Trainer passes num_items_in_batch so gradient accumulation normalises the loss correctly.
    accepts_loss_kwargs = True

    def __init__(self, model: nn.Module, options: PrefixOptions):
        super().__init__()
        self.base_model = model
        self.options = options
        glm = find_glm(model)
        device = glm.lm_head.weight.device
        # Trainable weights stay in float32 whatever the base dtype (fp16 training needs fp32 masters).
        self.prefix_encoder = PrefixEncoder(glm.config, options).to(device=device, dtype=torch.float32)
        self.dropout = nn.Dropout(options.prefix_dropout)
        self.register_buffer("prefix_tokens", torch.arange(options.num_virtual_tokens, device=device),
                             persistent=False)
        # The prefix cache is read-only during training, so a recomputed layer sees the same keys:
        # transformers' documented opt-in for keeping the cache under gradient checkpointing.
        for layer in glm.model.layers:
            layer._can_checkpoint_with_cache = True

    # ---- what the HF Trainer and generation loops touch -------------------------------------------
    @property
    def config(self):
        return find_glm(self.base_model).config

    @property
    def generation_config(self):
        return find_glm(self.base_model).generation_config

    @property
    def device(self) -> torch.device:
        return find_glm(self.base_model).lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return find_glm(self.base_model).lm_head.weight.dtype

    @property
    def pre_seq_len(self) -> int:
        return self.options.num_virtual_tokens

    # ---- what GenerationMixin asks of a PreTrainedModel beyond config/device ------------------------
    @classmethod
    def is_remote_code(cls) -> bool:  # this class is glmtune's own, not code from a model folder
        return False

    def get_experts_implementation(self) -> dict:
        return find_glm(self.base_model).get_experts_implementation()

    def set_experts_implementation(self, experts_implementation) -> None:
        find_glm(self.base_model).set_experts_implementation(experts_implementation)

    def get_input_embeddings(self) -> nn.Module:
        return find_glm(self.base_model).get_input_embeddings()

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers: int = 1,
                                        offload: bool = False) -> None:
        kwargs = dict(activation_checkpointing_kwargs or {})
        if kwargs.get("use_reentrant"):
            raise MethodError(
                "P-Tuning v2 needs non-reentrant gradient checkpointing (the prefix reaches each layer outside "
                "its positional inputs); remove use_reentrant: true from gradient_checkpointing_kwargs"
            )
        kwargs["use_reentrant"] = False
        glm = find_glm(self.base_model)
        glm._activation_checkpointing_enable(kwargs, every_n_layers, offload)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, every_n_layers: int = 1,
                                      offload: bool = False) -> None:
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, every_n_layers, offload)

    def activation_checkpointing_disable(self) -> None:
        find_glm(self.base_model).activation_checkpointing_disable()

    gradient_checkpointing_disable = activation_checkpointing_disable

    @property
    def is_activation_checkpointing(self) -> bool:
        return is_checkpointing(find_glm(self.base_model))

    is_gradient_checkpointing = is_activation_checkpointing

    # ---- the prefix ---------------------------------------------------------------------------------
    def get_prompt(self, batch_size: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (key, value) prefixes, each (batch, groups, P, head_dim), as the official get_prompt."""
        config = self.config
        tokens = self.prefix_tokens.unsqueeze(0).expand(batch_size, -1)
        out = self.prefix_encoder(tokens).to(dtype)
        out = out.view(batch_size, self.pre_seq_len, config.num_hidden_layers * 2,
                       config.num_key_value_heads, config.head_dim)
        out = self.dropout(out)
        # (layers*2, batch, groups, P, head_dim): row 2l is layer l's key, row 2l+1 its value.
        out = out.permute(2, 0, 3, 1, 4)
        return [(out[2 * i], out[2 * i + 1]) for i in range(config.num_hidden_layers)]

    def _start_cache(self, cache, batch: int, dtype: torch.dtype, grow: bool) -> PrefixCache:
        """The cache for this forward: the given PrefixCache, or a new one holding the prefix.

        ``generate`` hands the first forward an empty cache of its own making
        (a ``DynamicCache``); an empty cache of any kind starts a fresh prefix.
        """
        if isinstance(cache, PrefixCache):
            if self.training and torch.is_grad_enabled() and self.is_activation_checkpointing:
                raise MethodError("a cache cannot be passed in training with gradient checkpointing")
            return cache
        if cache is not None and cache.get_seq_length() > 0:
            raise MethodError(
                f"a P-Tuning model needs the PrefixCache it returned as its cache, got a filled "
                f"{type(cache).__name__}; start with cache=None"
            )
        return PrefixCache(self.get_prompt(batch, dtype), grow=grow)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, past_key_values=None,
                **kwargs):
        # ``past_key_values`` is the pre-5.x name of ``cache``; accepted for callers written against it.
        cache = cache if cache is not None else past_key_values
        ref = input_ids if input_ids is not None else inputs_embeds
        batch, length = ref.shape[0], ref.shape[1]
        dtype = self.dtype if inputs_embeds is None else inputs_embeds.dtype
        if use_cache is None:
            use_cache = self.config.use_cache
        # Training steps (grad enabled) keep the prefix cache read-only; generating in train mode
        # (under no_grad, as generate runs) grows it like any cache.
        grow = bool(use_cache) and not (self.training and torch.is_grad_enabled())
        cache = self._start_cache(cache, batch, dtype, grow)
        past = cache.get_seq_length()
        segments = None
        if attention_mask is None and position_ids is not None and past == 0:
            segments = packed_segments(position_ids)
        if attention_mask is None:
            attention_mask = torch.ones(batch, past + length, dtype=torch.long, device=ref.device)
        if attention_mask.dim() != 2 or attention_mask.shape[1] != past + length:
            raise MethodError(
                f"attention_mask must be 2D over the real tokens (past {past} + current {length}), "
                f"got shape {tuple(attention_mask.shape)}; do not include the {self.pre_seq_len} prefix slots"
            )
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
        mask = prefix_mask(attention_mask, length, self.pre_seq_len, dtype, segments)
        out = self.base_model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                              cache=cache, inputs_embeds=inputs_embeds, labels=labels,
                              use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
        out.cache = cache if grow else None
        return out
