"""Token-by-token generation with a KV cache: one prompt streamed, or a left-padded batch.

Our own loop rather than ``model.generate`` (which every glmtune model,
the P-Tuning v2 wrapper included, also supports) because it yields tokens as
they come without a streamer thread, takes a seeded ``torch.Generator`` per
request, and stops on any of several stop ids per row. The contract it
needs, in transformers' current cache API::

    out = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                cache=cache, use_cache=True)
    out.logits, out.cache

``attention_mask`` covers every token seen so far (1 real, 0 pad);
``position_ids`` number each row's real tokens 0..n-1 and then +1 per step,
the official ChatGLM3 left-padding scheme (pads sit at position 0). The first
call passes ``cache=None`` and the model creates its cache
(transformers' ``DynamicCache``, or the P-Tuning wrapper's prefix cache);
later calls pass back what it returned.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .sampling import SamplingConfig, make_generator, next_tokens


class GenerationStopped(Exception):
    """``should_stop()`` said True: the generation was abandoned before its end (its tokens are incomplete)."""


def sampling_config(*, max_new_tokens: int = 512, do_sample: bool | None = None, temperature: float | None = None,
                    top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0,
                    seed: int | None = None) -> SamplingConfig:
    """Resolve the keyword arguments both generation functions take.

    ``do_sample=False`` is greedy; ``True`` samples at ``temperature`` (1 when
    not given); ``None`` samples exactly when a positive ``temperature`` is given.
    """
    if do_sample is False:
        temperature = 0.0
    elif do_sample is True:
        temperature = 1.0 if temperature is None else temperature
    else:
        temperature = 0.0 if temperature is None else temperature
    return SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                          repetition_penalty=repetition_penalty, seed=seed)


def model_device(model) -> torch.device:
    """Where ``model``'s parameters live (CPU for a stand-in without parameters)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _accepts_logits_to_keep(model) -> bool:
    # Only the last position's logits are needed; over a 65k vocabulary a long
    # prompt's full logits cost gigabytes. PEFT forwards **kwargs to the base.
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(target.forward).parameters


@contextmanager
def eval_mode(model):
    """Dropout off while generating, then the caller's mode back (training-time evaluation)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


@dataclass
class _State:
    """Tensors that grow by one column per step."""

    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    seen: torch.Tensor
    finished: torch.Tensor
    cache: object = None


def decode_steps(model, batch: dict[str, torch.Tensor], config: SamplingConfig, *, stop_ids: Iterable[int] = (),
                 pad_token_id: int = 0, generator: torch.Generator | None = None,
                 should_stop: Callable[[], bool] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(tokens, finished)`` per step, each of shape (B,).

    ``batch`` holds left-padded ``input_ids``, ``attention_mask`` and
    ``position_ids``. A row is finished once it produced a stop token (that
    step's token is the stop token); later steps feed it padding and its
    tokens are meaningless. Stops when every row is finished or after
    ``max_new_tokens`` steps. ``should_stop`` is asked before every step (a
    flag read, e.g. a signal handler's): True raises :class:`GenerationStopped`,
    so a stop request ends a long generation at its next token.
    """
    device = model_device(model)
    ids = batch["input_ids"].to(device)
    # The first call gets no cache: the model makes its own (a DynamicCache, or
    # the P-Tuning wrapper's PrefixCache holding the prefix) and returns it.
    state = _State(batch["attention_mask"].to(device), batch["position_ids"].to(device), ids,
                   torch.zeros(ids.shape[0], dtype=torch.bool, device=device))
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    if generator is None:
        generator = make_generator(config.seed, device)
    extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    step_ids, step_pos = ids, state.position_ids
    for _ in range(config.max_new_tokens):
        if should_stop is not None and should_stop():
            raise GenerationStopped
        out = model(input_ids=step_ids, attention_mask=state.attention_mask, position_ids=step_pos,
                    cache=state.cache, use_cache=True, **extra)
        state.cache = out.cache
        seen = state.seen if config.repetition_penalty != 1.0 else None
        tokens = next_tokens(out.logits[:, -1, :], config, generator, seen)
        tokens = tokens.masked_fill(state.finished, pad_token_id)
        state.finished = state.finished | torch.isin(tokens, stops)
        yield tokens, state.finished
        if bool(state.finished.all()):
            return
        step_ids = tokens[:, None]
        step_pos = state.position_ids[:, -1:] + 1
        state.position_ids = torch.cat([state.position_ids, step_pos], dim=1)
        state.attention_mask = torch.cat([state.attention_mask, state.attention_mask.new_ones(ids.shape[0], 1)], dim=1)
        if seen is not None:
            state.seen = torch.cat([state.seen, step_ids], dim=1)


def generate_stream(model, input_ids: list[int], *, max_new_tokens: int = 512, do_sample: bool | None = None,
                    temperature: float | None = None, top_p: float = 1.0, top_k: int = 0,
                    repetition_penalty: float = 1.0, seed: int | None = None,
                    generator: torch.Generator | None = None, stop_ids: Iterable[int] | None = None) -> Iterator[int]:
    """Yield the generated token ids of one prompt as they are produced.

    The stop token (one of ``stop_ids``, e.g. ``tokenizer.stop_ids``) ends the
    stream and is not yielded; ``stop_ids=None`` never stops early. Greedy
    unless ``temperature > 0`` (or ``do_sample=True``); see :func:`sampling_config`.
    """
    if len(input_ids) == 0:
        raise ValueError("generate_stream needs a non-empty prompt (at least [gMASK] sop)")
    config = sampling_config(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
                             top_k=top_k, repetition_penalty=repetition_penalty, seed=seed)
    n = len(input_ids)
    batch = {"input_ids": torch.tensor([list(input_ids)], dtype=torch.long),
             "attention_mask": torch.ones(1, n, dtype=torch.long),
             "position_ids": torch.arange(n, dtype=torch.long)[None]}
    with torch.no_grad(), eval_mode(model):
        for tokens, finished in decode_steps(model, batch, config, stop_ids=stop_ids or (), generator=generator):
            if bool(finished[0]):
                return
            yield int(tokens[0])


def generate_batch(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int = 512,
                   do_sample: bool | None = False, temperature: float | None = None, top_p: float = 1.0,
                   top_k: int = 0, repetition_penalty: float = 1.0, seed: int | None = None,
                   generator: torch.Generator | None = None, stop_ids: Iterable[int] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> list[list[int]]:
    """Generated ids per prompt (stop token excluded), the batch left-padded as the official tokenizer does.

    ``stop_ids=None`` uses ``tokenizer.stop_ids`` (eos, ``<|user|>``,
    ``<|observation|>``); pass ``()`` to never stop early. Each row gets the
    same tokens it would get alone (up to float rounding in the padded batch).
    ``should_stop``: see :func:`decode_steps` (True raises :class:`GenerationStopped`).
    """
    if not prompts:
        return []
    empty = [i for i, p in enumerate(prompts) if len(p) == 0]
    if empty:
        raise ValueError(f"generate_batch: prompt {empty[0]} is empty (every prompt needs at least [gMASK] sop)")
    config = sampling_config(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
                             top_k=top_k, repetition_penalty=repetition_penalty, seed=seed)
    stops = tokenizer.stop_ids if stop_ids is None else list(stop_ids)
    outputs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    with torch.no_grad(), eval_mode(model):
        steps = decode_steps(model, tokenizer.pad(prompts), config, stop_ids=stops,
                             pad_token_id=tokenizer.pad_token_id, generator=generator, should_stop=should_stop)
        for tokens, finished in steps:
            for row, (token, stop) in enumerate(zip(tokens.tolist(), finished.tolist())):
                if done[row]:
                    continue
                if stop:
                    done[row] = True
                else:
                    outputs[row].append(token)
    return outputs
