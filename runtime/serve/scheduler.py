"""Continuous batching on the server's model thread: one running batch, new requests admitted at step boundaries.

Each turn of the loop:
1. admit: while the running batch has room (--max-batch rows, --max-batch-tokens of KV cache), waiting requests
   form a prefill group (expired or abandoned ones are answered and dropped here);
2. prefill: the group's prompts (left-padded among themselves) advance by one chunk of --prefill-chunk columns,
   so a long prompt costs the running streams one chunk's delay per turn, not its whole prefill; when the last
   chunk is done each row's first token is chosen and the group joins the running batch (the shorter past is
   left-padded, sparsetrt.runtime.backends.base.join_caches);
3. decode: one step for every running row; each row picks its token with its own sampling settings and random
   generator, then finished rows (stop token or string, max_tokens, client gone, deadline) retire, and the cache
   keeps only the live rows and the columns they still need.

Memory bound: a row reserves prompt + max_tokens positions; the batch admits a row only while (rows x the largest
reservation) <= --max-batch-tokens, which bounds the padded cache tensor (rows x widest past) at every step.
A request larger than the whole budget is refused when it arrives (app.make_job).

Greedy output does not depend on batch mates: padding is masked exactly and every row's token is chosen from its
own logits; a seeded request draws from its own generator, so it repeats whatever it was batched with (the float
noise of a different batch shape, ~1e-6 in the logits, would have to move a draw across a probability boundary).
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass, field

import numpy as np

from sparsetrt.runtime.backends.base import join_caches, position_ids_for, select_cache_rows
from sparsetrt.runtime.generate import Sampling, left_pad, select_tokens
from sparsetrt.runtime.serve.errors import ServeError

log = logging.getLogger("sparsetrt.serve")

END = object()  # put on the queue after the last job: finish what is admitted and queued, then return


@dataclass(frozen=True)
class BatchLimits:
    max_batch: int = 8              # rows decoded together
    max_batch_tokens: int = 16384   # KV-cache positions the running batch may hold (rows x widest reservation)
    prefill_chunk: int = 256        # prompt columns prefilled per turn; 0 = whole prompts


@dataclass
class Row:
    """One request in the batch: what it was asked, what it has produced, and its own random generator."""

    job: object                     # serve.worker.Job
    sampling: Sampling
    text: object                    # serve.worker.TextAssembler
    started: float                  # the model thread took it
    rng: np.random.Generator = field(init=False)
    tokens: list[int] = field(default_factory=list)
    first: float | None = None
    last: float | None = None
    route: object = None            # adaptive serving: the request's routing state (runtime.adaptive.router)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.sampling.seed)

    @property
    def reserved(self) -> int:
        return len(self.job.prompt_ids) + self.sampling.max_new_tokens


@dataclass
class Batch:
    """Rows sharing one left-padded KV cache on one runner: mask [rows, past] says which columns are each row's."""

    runner: object
    rows: list[Row] = field(default_factory=list)
    mask: np.ndarray | None = None
    cache: object = None
    next_tokens: np.ndarray | None = None   # chosen last turn, fed this turn

    @property
    def past(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def join(self, rows: list[Row], mask: np.ndarray, cache, tokens: np.ndarray) -> float:
        """Add rows with their own cache (past = mask's columns); the seconds spent re-packing."""
        if not self.rows:
            self.rows, self.mask, self.cache, self.next_tokens = list(rows), mask, cache, tokens
            return 0.0
        start = time.perf_counter()
        self.cache = join_caches(self.cache, self.past, cache, mask.shape[1])
        self.mask = np.concatenate(left_pad_masks(self.mask, mask), axis=0)
        self.next_tokens = np.concatenate([self.next_tokens, tokens])
        self.rows.extend(rows)
        return time.perf_counter() - start

    def keep(self, keep: list[int]) -> float:
        """Only rows `keep`, without the leading columns none of them needs; the seconds spent re-packing."""
        if len(keep) == len(self.rows):
            return 0.0
        if not keep:
            self.rows, self.mask, self.cache, self.next_tokens = [], None, None, None
            return 0.0
        start = time.perf_counter()
        mask = self.mask[keep]
        unused = int(np.argmax(mask.any(axis=0)))  # leading columns that are padding in every kept row
        self.cache = select_cache_rows(self.cache, keep, drop_columns=unused)
        self.mask = mask[:, unused:]
        self.next_tokens = self.next_tokens[keep]
        self.rows = [self.rows[i] for i in keep]
        return time.perf_counter() - start


@dataclass
class PrefillGroup:
    rows: list[Row]
    ids: np.ndarray                 # [rows, widest prompt], left-padded
    mask: np.ndarray
    cache: object
    done: int = 0                   # columns prefilled so far


class BatchScheduler:
    """Drives `worker.runner` for every admitted job; `worker` (serve.worker.GenerationWorker) owns the queue, the
    tokenizer, the stop ids, the metrics and how a row's events reach its client.

    Adaptive serving (a runner with open_request): one batch per variant. Each request is routed when admitted
    (the probe's prefill, the controller's choice, the chosen variant's prefill; whole prompts) and joins its
    variant's batch; a request escalated mid-generation moves to the dense variant's batch with the cache dense
    prefilled for it. Every variant with rows runs one decode step per turn."""

    def __init__(self, worker, limits: BatchLimits):
        self.worker, self.runner = worker, worker.runner
        self.routed = hasattr(self.runner, "open_request")
        runners = self.runner.runners if self.routed else [self.runner]
        self.lanes = [Batch(runner) for runner in runners]
        self.limits = self._limits_for(limits, runners)
        self.prefill: PrefillGroup | None = None
        self.waiting = None           # the next job, taken from the queue but not yet admitted
        self.stopping = False
        self.repack_s = 0.0           # time spent joining and compacting caches (reported by /metrics)
        self.peak_batch_tokens = 0    # the most KV-cache positions held at once (/health)

    def _limits_for(self, limits: BatchLimits, runners: list) -> BatchLimits:
        """What the runners allow: a TensorRT engine's profiles cap the batch, and its decode profile takes one token
        (no chunked prefill); adaptive routing prefills whole prompts (the probe reads all of a prompt's logits)."""
        max_batch, chunk = limits.max_batch, limits.prefill_chunk
        engine_batch = min((r.max_batch for r in runners if getattr(r, "max_batch", None)), default=None)
        if engine_batch and engine_batch < max_batch:
            log.info("batch capped by the engine profile", extra={"event": "batch_capped", "max_batch": engine_batch})
            max_batch = engine_batch
        if self.routed or not all(getattr(r, "chunked_prefill", True) for r in runners):
            chunk = 0
        return BatchLimits(max_batch=max_batch, max_batch_tokens=limits.max_batch_tokens, prefill_chunk=chunk)

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Until the queue's end marker arrives and every admitted request has finished."""
        while True:
            self._admit()
            if self.stopping and not self.active_rows():
                return
            try:
                if self.prefill is not None:
                    self._prefill_chunk()
                for lane in self.lanes:
                    if lane.rows:
                        self._decode_step(lane)
            except Exception as exc:  # a failing step fails the requests in it, never the model thread
                log.exception("generation failed", extra={"event": "generation_failed"})
                for row in self.rows():
                    self._retire(row, ("error", exc))
                self.lanes = [Batch(lane.runner) for lane in self.lanes]
                self.prefill = None
            self.worker.gauge(self.active_rows(), self.batch_tokens())

    def rows(self) -> list[Row]:
        """Every admitted row: decoding in a batch, or being prefilled."""
        return [r for lane in self.lanes for r in lane.rows] + (self.prefill.rows if self.prefill else [])

    def active_rows(self) -> int:
        return len(self.rows())

    def batch_tokens(self) -> int:
        """KV-cache positions held now (padding included)."""
        held = sum(len(lane.rows) * lane.past for lane in self.lanes)
        return held + (self.prefill.mask.shape[0] * self.prefill.done if self.prefill else 0)

    def queued(self) -> int:
        return self.worker.jobs.qsize() + (self.waiting is not None)

    def _note_peak(self) -> None:
        self.peak_batch_tokens = max(self.peak_batch_tokens, self.batch_tokens())

    # -- admission ----------------------------------------------------------------------------------------------
    def _next_job(self, block: bool):
        if self.waiting is not None:
            job, self.waiting = self.waiting, None
            return job
        try:
            return self.worker.jobs.get(block=block)
        except queue.Empty:
            return None

    def _admit(self) -> None:
        """Form a prefill group from waiting jobs while they fit (only when no group is being prefilled)."""
        if self.prefill is not None or self.stopping:
            return
        admitted: list[Row] = []
        idle = not self.active_rows()
        while True:
            job = self._next_job(block=idle and not admitted)  # an idle batch waits for work; a busy one never
            if job is None:
                break
            if job is END:
                self.stopping = True
                break
            now = time.monotonic()
            if job.cancelled.is_set():
                self.worker.cancelled(job, 0)
                continue
            if now > job.deadline:
                job.emit("error", ServeError(503, f"request timed out after {now - job.submitted:.1f} s in the "
                                                  "queue; retry later or raise --request-timeout", "timeout",
                                             code="queue_timeout", headers={"Retry-After": "1"}))
                continue
            row = Row(job, self.worker.sampling_for(job), self.worker.assembler_for(job), started=now)
            if not self._fits(admitted + [row]):
                self.waiting = job
                break
            admitted.append(row)
        if admitted:
            self._start_prefill(admitted)

    def _fits(self, new_rows: list[Row]) -> bool:
        rows = self.rows() + new_rows
        if len(rows) > self.limits.max_batch:
            return False
        if len(rows) == 1:
            return True  # a lone request over the budget was refused on arrival; never starve the queue
        return len(rows) * max(r.reserved for r in rows) <= self.limits.max_batch_tokens

    # -- prefill ------------------------------------------------------------------------------------------------
    def _start_prefill(self, rows: list[Row]) -> None:
        if self.routed:
            for row in rows:
                self._route(row)
            return
        ids, mask = left_pad([r.job.prompt_ids for r in rows], self.worker.pad_id)
        self.prefill = PrefillGroup(rows, ids, mask, self.runner.empty_cache(len(rows)))

    def _route(self, row: Row) -> None:
        """Adaptive serving: the controller picks the row's variant (prefilling it there); the row joins that batch."""
        row.route, logits = self.runner.open_request(row.job.prompt_ids, row.sampling.max_new_tokens)
        lane = self.lanes[row.route.arm]
        self._join_routed(lane, row, self._choose([row], logits))
        self._note_peak()
        self._deliver(lane, first=len(lane.rows) - 1)

    def _prefill_chunk(self) -> None:
        group, lane = self.prefill, self.lanes[0]
        width = group.ids.shape[1]
        end = width if not self.limits.prefill_chunk else min(width, group.done + self.limits.prefill_chunk)
        mask = group.mask[:, :end]
        logits, group.cache = self.runner.step(group.ids[:, group.done:end], mask,
                                               position_ids_for(mask, end - group.done), group.cache)
        self.runner.synchronize()
        group.done = end
        self._note_peak()
        if end < width:
            return
        self.prefill = None
        self.repack_s += lane.join(group.rows, group.mask, group.cache, self._choose(group.rows, logits))
        self._deliver(lane, first=len(lane.rows) - len(group.rows))

    # -- decode -------------------------------------------------------------------------------------------------
    def _decode_step(self, lane: Batch) -> None:
        lane.mask = np.concatenate([lane.mask, np.ones((len(lane.rows), 1), dtype=np.int64)], axis=1)
        start = time.perf_counter()
        fed = lane.next_tokens
        logits, lane.cache = lane.runner.step(fed[:, None], lane.mask, position_ids_for(lane.mask, 1), lane.cache)
        lane.runner.synchronize()
        self._note_peak()  # before any row retires
        if self.worker.metrics:
            self.worker.metrics.batch_size.observe(len(lane.rows))
        if self.routed:  # escalation may hand a row to dense, with dense's logits for this position
            share = (time.perf_counter() - start) / len(lane.rows)
            logits = np.concatenate([self.runner.after_token(row.route, int(fed[i]), logits[i:i + 1], share)
                                     for i, row in enumerate(lane.rows)])
        lane.next_tokens = self._choose(lane.rows, logits)
        self._deliver(lane, first=0)
        if self.routed:
            self._move_escalated(lane)

    def _move_escalated(self, lane: Batch) -> None:
        index = self.lanes.index(lane)
        moved = [i for i, row in enumerate(lane.rows) if row.route.arm != index]
        if not moved:
            return
        leaving = [(lane.rows[i], int(lane.next_tokens[i])) for i in moved]
        self.repack_s += lane.keep([i for i in range(len(lane.rows)) if i not in moved])
        for row, token in leaving:
            self._join_routed(self.lanes[row.route.arm], row, np.array([token], dtype=np.int64))

    def _join_routed(self, lane: Batch, row: Row, token: np.ndarray) -> None:
        """A routed row joins `lane` with the cache its variant prefilled for it (every position so far is real);
        the lane holds that cache from now on."""
        cache, row.route.cache = row.route.cache, None
        self.repack_s += lane.join([row], np.ones((1, len(row.route.ids)), dtype=np.int64), cache, token)

    def _choose(self, rows: list[Row], logits: np.ndarray) -> np.ndarray:
        """Each row's next token from its own logits, settings and generator (what a batch of one would pick)."""
        return np.array([int(select_tokens(logits[i:i + 1], row.sampling, row.rng)[0]) for i, row in enumerate(rows)],
                        dtype=np.int64)

    def _deliver(self, lane: Batch, first: int) -> None:
        """Hand rows first.. of the lane their new token; retire the ones that finished and compact the lane."""
        finished = {}
        for i in range(first, len(lane.rows)):
            outcome = self._take_token(lane.rows[i], int(lane.next_tokens[i]))
            if outcome is not None:
                finished[i] = outcome
        for i, outcome in finished.items():
            self._retire(lane.rows[i], outcome)
        self.repack_s += lane.keep([i for i in range(len(lane.rows)) if i not in finished])

    def _take_token(self, row: Row, token: int):
        """Stream the row's new token; None while it goes on, else why it ended: stop | length | cancelled |
        timeout (each row is checked at every step, so a client that left frees its row at the next one)."""
        now = time.monotonic()
        metrics = self.worker.metrics
        if row.first is None:
            row.first = now
        elif metrics:
            metrics.inter_token.observe(now - row.last)
        row.last = now
        row.tokens.append(token)
        if token in row.sampling.stop_tokens:
            return "stop"
        delta, stopped = row.text.add(token)
        if delta:
            row.job.emit("text", delta)
        if stopped:
            return "stop"
        if len(row.tokens) >= row.sampling.max_new_tokens:
            return "length"
        if row.job.cancelled.is_set():
            return "cancelled"
        if now > row.job.deadline:
            return "timeout"
        return None

    def _retire(self, row: Row, outcome) -> None:
        """Send the row's last events (done or an error) and let adaptive routing learn from it."""
        job, produced = row.job, len(row.tokens)
        try:
            if outcome in ("stop", "length"):
                if outcome == "length":
                    tail = row.text.flush()
                    if tail:
                        job.emit("text", tail)
                completion = self.worker.completion(job, outcome, produced, started=row.started,
                                                    first=row.first or time.monotonic())
                job.emit("done", completion)
                if self.worker.metrics:
                    self.worker.metrics.observe_completion(completion)
            elif outcome == "cancelled":
                self.worker.cancelled(job, produced)
            elif outcome == "timeout":
                job.emit("error", ServeError(504, f"request timed out after {time.monotonic() - job.submitted:.1f} s "
                                                  f"with {produced} tokens generated; ask for fewer tokens or raise "
                                                  "--request-timeout", "timeout", code="generation_timeout"))
            else:
                exc = outcome[1]
                job.emit("error", ServeError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error"))
        finally:
            if self.routed:  # after "done": the client does not wait for an audit's dense pass
                self.runner.close_request(row.route, row.tokens)


def left_pad_masks(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two attention masks widened to the same number of columns with zeros on the left."""
    width = max(first.shape[1], second.shape[1])
    return tuple(np.pad(m, ((0, 0), (width - m.shape[1], 0))) for m in (first, second))
