"""Continuous batching: one worker thread decodes every request in flight together, on one model.

Requests (:class:`Job`: prompt ids + sampling options) queue up; the worker
takes what is waiting (after ``wait_s`` more when it was idle, to gather a burst;
0 by default: a lone request starts at once, later ones join at the next step),
runs their prompts as one left-padded forward, and from then on advances every
row by one token per forward. Rows join a running batch between
steps (their KV cache rows are left-padded and appended, :mod:`.kv_rows`) and
leave it when they produce a stop id, reach ``max_new_tokens`` or are
cancelled (client gone, stop string found), so a long reply never holds up a
short one.

Batching does not change a reply: each row keeps the positions, mask and
repetition-penalty history it would have alone, and draws from its own
``torch.Generator`` seeded with the request's seed, so a seeded or greedy
request gets the tokens it gets alone (up to float rounding in the padded batch).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from . import kv_rows
from .generation import _accepts_logits_to_keep, eval_mode, model_device
from .sampling import SamplingConfig, make_generator, next_tokens

DONE = object()
"""Put on a job's queue after its last token."""


class QueueFull(UserError):
    """Too many requests waiting; the server answers 503 (try again later)."""


@dataclass(eq=False)
class Job:
    """One request: its tokens come out of ``out`` (ints, then :data:`DONE`, or an exception)."""

    prompt: list[int]
    sampling: SamplingConfig
    stop_ids: tuple[int, ...]
    out: queue.Queue = field(default_factory=queue.Queue)
    cancelled: bool = False

    def cancel(self) -> None:
        """Stop generating for this request; the worker frees its row before the next step."""
        self.cancelled = True


@dataclass(eq=False)
class _Row:
    job: Job
    generator: torch.Generator | None
    seen: torch.Tensor | None  # (1, T) prompt + generated ids, kept only for a repetition penalty
    produced: int = 0


@dataclass(eq=False)
class _Batch:
    rows: list[_Row]
    mask: torch.Tensor  # (B, T): attention mask of the cached tokens
    next_ids: torch.Tensor  # (B,): tokens chosen but not yet fed
    next_pos: torch.Tensor  # (B,): their positions
    cache: object


def choose_tokens(logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
    """Each row's next token from its own logits, options and generator: (B, V) -> (B,)."""
    out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    plain = [i for i, r in enumerate(rows) if r.job.sampling.greedy and r.job.sampling.repetition_penalty == 1.0]
    if plain:  # the common greedy case in one argmax
        index = torch.tensor(plain, device=logits.device)
        out[index] = logits[index].float().argmax(dim=-1)
    plain_rows = set(plain)
    for i, row in enumerate(rows):
        if i not in plain_rows:
            out[i] = next_tokens(logits[i:i + 1], row.job.sampling, row.generator, row.seen)[0]
    return out


def _finish(job: Job, item=DONE) -> None:
    job.out.put(item)


class Batcher:
    """The generation worker. ``submit`` from any thread; ``close`` stops it."""

    def __init__(self, model, tokenizer, *, max_batch: int = 32, max_queue: int = 256, wait_s: float = 0.0):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue, self.wait_s = max_batch, max_queue, wait_s
        self.device = model_device(model)
        self._extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0  # forwards run (for tests and benchmarks)
        self._thread = threading.Thread(target=self._run, name="glmtune-batcher", daemon=True)
        self._thread.start()

    # -- the request side ---------------------------------------------------------------------
    def submit(self, prompt: list[int], sampling: SamplingConfig, stop_ids) -> Job:
        """Queue a request; :class:`QueueFull` when ``max_queue`` requests are already waiting."""
        job = Job(list(prompt), sampling, tuple(stop_ids))
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"the server is busy: {len(self._pending)} requests are waiting (limit "
                                f"{self.max_queue}, --max-queue); retry shortly")
            self._pending.append(job)
            self._cond.notify()
        return job

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    # -- the worker ---------------------------------------------------------------------------
    def _take(self, batch: _Batch | None) -> list[Job] | None:
        """Jobs to start now (None once closed); blocks while idle."""
        with self._cond:
            if batch is None:
                while not self._pending and not self._closed:
                    self._cond.wait()
                deadline = time.monotonic() + self.wait_s
                while len(self._pending) < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            if self._closed:
                for job in self._pending:
                    _finish(job, QueueFull("the server is shutting down"))
                self._pending.clear()
                return None
            room = self.max_batch - (len(batch.rows) if batch else 0)
            if batch is not None and not kv_rows.can_join(batch.cache):
                room = 0  # this cache cannot take new rows: they start with the next batch
            return [self._pending.popleft() for _ in range(min(room, len(self._pending)))]

    def _run(self) -> None:
        batch: _Batch | None = None
        with torch.no_grad(), eval_mode(self.model):
            while True:
                jobs = self._take(batch)
                if jobs is None:
                    break
                try:
                    batch = self._admit(batch, jobs)
                    batch = self._step(batch) if batch is not None else None
                except Exception as exc:  # noqa: BLE001 -- every waiting request gets the error, the worker goes on
                    for row in batch.rows if batch else []:
                        _finish(row.job, exc)
                    for job in jobs:
                        _finish(job, exc)
                    batch = None
            for row in batch.rows if batch else []:
                _finish(row.job, QueueFull("the server is shutting down"))

    def _forward(self, ids, mask, pos, cache):
        self.steps += 1
        return self.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                          **self._extra)

    def _admit(self, batch: _Batch | None, jobs: list[Job]) -> _Batch | None:
        """Run the new prompts as one batch and join it to the running one."""
        for job in [j for j in jobs if j.cancelled]:
            _finish(job)
        jobs = [j for j in jobs if not j.cancelled]
        if not jobs:
            return batch
        padded = {k: v.to(self.device) for k, v in self.tokenizer.pad([j.prompt for j in jobs]).items()}
        out = self._forward(padded["input_ids"], padded["attention_mask"], padded["position_ids"], None)
        rows = [_Row(j, make_generator(j.sampling.seed, self.device),
                     torch.tensor([j.prompt], device=self.device) if j.sampling.repetition_penalty != 1.0 else None)
                for j in jobs]
        new = _Batch(rows, padded["attention_mask"], choose_tokens(out.logits[:, -1, :], rows),
                     padded["position_ids"][:, -1] + 1, out.cache)
        new = self._deliver(new)
        if new is None:
            return batch
        if batch is None:
            return new
        batch.cache, batch.mask = kv_rows.join(batch.cache, batch.mask, new.cache, new.mask)
        batch.rows += new.rows
        batch.next_ids = torch.cat([batch.next_ids, new.next_ids])
        batch.next_pos = torch.cat([batch.next_pos, new.next_pos])
        return batch

    def _step(self, batch: _Batch) -> _Batch | None:
        """Feed every row its chosen token; choose the next ones."""
        for row in batch.rows:
            if row.job.cancelled:
                _finish(row.job)
        batch = self._keep(batch, [not r.job.cancelled for r in batch.rows])
        if batch is None:
            return None
        mask = torch.cat([batch.mask, batch.mask.new_ones(batch.mask.shape[0], 1)], dim=1)
        out = self._forward(batch.next_ids[:, None], mask, batch.next_pos[:, None], batch.cache)
        batch.mask, batch.cache = mask, out.cache
        batch.next_ids = choose_tokens(out.logits[:, -1, :], batch.rows)
        batch.next_pos = batch.next_pos + 1
        return self._deliver(batch)

    def _deliver(self, batch: _Batch) -> _Batch | None:
        """Hand each row its new token; rows that produce a stop id or reach max_new_tokens leave the batch."""
        keep = []
        for row, token in zip(batch.rows, batch.next_ids.tolist()):
            job = row.job
            row.produced += 1
            if row.seen is not None:
                row.seen = torch.cat([row.seen, row.seen.new_tensor([[token]])], dim=1)
            if token in job.stop_ids:
                _finish(job)
                keep.append(False)
                continue
            job.out.put(token)
            if row.produced >= job.sampling.max_new_tokens:
                _finish(job)
            keep.append(row.produced < job.sampling.max_new_tokens)
        return self._keep(batch, keep)

    def _keep(self, batch: _Batch, keep: list[bool]) -> _Batch | None:
        """The batch with only the rows marked True (None when none is left)."""
        if all(keep):
            return batch
        if not any(keep):
            return None
        index = torch.tensor([i for i, k in enumerate(keep) if k], device=batch.mask.device)
        kv_rows.select_rows(batch.cache, index)
        batch.rows = [r for r, k in zip(batch.rows, keep) if k]
        batch.mask, batch.next_ids, batch.next_pos = batch.mask[index], batch.next_ids[index], batch.next_pos[index]
        # Columns that are padding in every remaining row are dropped: attention over them is wasted work.
        empty = int((batch.mask.sum(dim=0) == 0).long().cumprod(dim=0).sum())
        if empty and kv_rows.can_join(batch.cache):
            kv_rows.drop_left(batch.cache, empty)
            batch.mask = batch.mask[:, empty:]
        return batch
