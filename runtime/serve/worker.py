"""The server's one model thread: a bounded queue of jobs in front of a single runner, batched continuously.

Why one thread: every backend runner (an ORT session, a TensorRT execution context) is driven from one place
and already uses the machine's cores (or the GPU) inside a step, so a second concurrent step would only split
them; concurrency comes from batching rows into each step instead (sparsetrt.runtime.serve.scheduler). The HTTP
side stays on the event loop and never blocks on the model; a job hands its events (text deltas, then one `done`
or `error`) back to the loop with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from sparsetrt.runtime.generate import Sampling, stop_tokens_of, token_stream
from sparsetrt.runtime.serve.errors import ServeError
from sparsetrt.runtime.serve.scheduler import END, BatchLimits, BatchScheduler

log = logging.getLogger("sparsetrt.serve")

WARMUP_PROMPT = "The capital of France is"


@dataclass
class Job:
    prompt_ids: list[int]
    sampling: Sampling
    stop_texts: tuple[str, ...]
    deadline: float                       # time.monotonic() after which the job gives up (queue wait included)
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)

    def emit(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass
class Completion:
    """What a finished job reports with its `done` event."""
    finish_reason: str                    # stop | length
    prompt_tokens: int
    completion_tokens: int
    queue_s: float                        # submitted -> the model thread took it
    ttft_s: float                         # submitted -> first token chosen (queue wait included, as a client sees it)


class TextAssembler:
    """Token ids in, text deltas out, cut at the first stop string. A delta is held back while it could still
    be the start of a stop string or ends in half a UTF-8 character (the tokenizer decodes those as U+FFFD)."""

    def __init__(self, tokenizer, stop_texts: tuple[str, ...]):
        self.tokenizer, self.stop_texts = tokenizer, stop_texts
        self.tokens: list[int] = []
        self.sent = 0
        self.hold = max((len(s) for s in stop_texts), default=1) - 1

    def add(self, token: int) -> tuple[str, bool]:
        """(new text safe to send, whether a stop string ended the text)."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop_texts) if i >= 0), default=-1)
        if cut >= 0:
            return self._take(text, cut), True
        safe = len(text) - self.hold
        while safe > self.sent and text[safe - 1] == "\ufffd":
            safe -= 1
        return self._take(text, safe), False

    def flush(self) -> str:
        """The held-back tail, once generation ended without a stop string."""
        return self._take(self.tokenizer.decode(self.tokens, skip_special_tokens=True), None)

    def _take(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else end
        delta = text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return delta


class GenerationWorker:
    """state: loading -> ready -> draining -> stopped (or failed). submit() raises ServeError when the job cannot
    be queued; everything after that arrives as events on the job."""

    def __init__(self, served, max_queue: int, metrics=None, warmup_tokens: int = 4,
                 limits: BatchLimits | None = None):
        self.served, self.metrics, self.warmup_tokens = served, metrics, warmup_tokens
        self.limits = limits or BatchLimits()
        self.jobs: queue.Queue = queue.Queue(maxsize=max_queue)
        self.max_queue = max_queue
        self.state = "loading"
        self.failure: str | None = None
        self.scheduler: BatchScheduler | None = None
        self.tokenizer = None
        self.request_tokenizer = None  # the HTTP side's own copy: a tokenizer is not shared across threads
        self.on_failure = None         # called (from the model thread) when the model cannot be loaded
        self._thread = threading.Thread(target=self._main, name="sparsetrt-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the queue and the running batch, then end the thread (the HTTP server has stopped taking
        requests by now). A model still loading is not waited for: nothing can be queued yet, and the thread dies
        with the process."""
        if self.state in ("loading", "failed"):
            return
        self.drain()
        self.jobs.put(END)  # blocks only while the queue is full, i.e. until the scheduler takes the next job
        self._thread.join(timeout)
        if self.state != "failed":
            self.state = "stopped"

    def drain(self) -> None:
        """Refuse new jobs (503) from now on; queued and running ones still finish."""
        if self.state == "ready":
            self.state = "draining"

    def submit(self, job: Job) -> None:
        if self.state != "ready":
            reasons = {"loading": "the model is still loading; retry when /health says ready",
                       "draining": "the server is shutting down", "stopped": "the server is shutting down"}
            raise ServeError(503, reasons.get(self.state, f"the model failed to load: {self.failure}"),
                             "server_unavailable", code=self.state, headers={"Retry-After": "1"})
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise ServeError(429, f"server busy: {self.max_queue} requests are already queued; retry later",
                             "rate_limit_exceeded", code="queue_full", headers={"Retry-After": "1"}) from None
        self.gauge()

    def queued(self) -> int:
        return self.scheduler.queued() if self.scheduler else self.jobs.qsize()

    def load(self) -> dict:
        """What /health shows of the running batch."""
        if self.scheduler is None:
            return {"running": 0, "batch_tokens": 0, "peak_batch_tokens": 0, **vars(self.limits)}
        return {"running": self.scheduler.active_rows(), "batch_tokens": self.scheduler.batch_tokens(),
                "peak_batch_tokens": self.scheduler.peak_batch_tokens, **vars(self.scheduler.limits)}

    def gauge(self, running: int | None = None, batch_tokens: int | None = None) -> None:
        if self.metrics:
            self.metrics.set_load(self.queued(), running, batch_tokens,
                                  self.scheduler.repack_s if self.scheduler else None)

    def _main(self) -> None:
        try:
            start = time.monotonic()
            self.runner, self.tokenizer = self.served.load()
            if self.metrics is not None and hasattr(self.runner, "attach_metrics"):
                self.runner.attach_metrics(self.metrics)  # adaptive serving: decisions per variant
            self.request_tokenizer = self.served.load_tokenizer()
            self.stop_ids = stop_tokens_of(self.tokenizer, getattr(getattr(self.runner, "model", None), "config", None))
            self.pad_id = self.tokenizer.pad_token_id or 0
            # Warm-up: the first run of a session allocates and (ORT) optimises; no client should pay for it.
            ids = self.tokenizer(WARMUP_PROMPT)["input_ids"]
            for _ in token_stream(self.runner, [ids], Sampling(max_new_tokens=self.warmup_tokens), self.pad_id):
                pass
            self.scheduler = BatchScheduler(self, self.limits)
            log.info("model ready", extra={"event": "ready", "load_s": round(time.monotonic() - start, 2),
                                           "model": self.served.describe(), "batching": vars(self.scheduler.limits)})
            self.state = "ready"
        except Exception as exc:  # reported by /health and every request, never a silent dead thread
            self.failure = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
            log.error("model failed to load", extra={"event": "load_failed", "error": self.failure})
            if self.on_failure:
                self.on_failure()
            return
        self.scheduler.run()

    # -- what the scheduler asks of the server --------------------------------------------------------------------
    def sampling_for(self, job: Job) -> Sampling:
        return Sampling(max_new_tokens=job.sampling.max_new_tokens, temperature=job.sampling.temperature,
                        top_p=job.sampling.top_p, seed=job.sampling.seed, stop_tokens=self.stop_ids)

    def assembler_for(self, job: Job) -> TextAssembler:
        return TextAssembler(self.tokenizer, job.stop_texts)

    @staticmethod
    def completion(job: Job, finish: str, produced: int, started: float, first: float) -> Completion:
        return Completion(finish, len(job.prompt_ids), produced, queue_s=started - job.submitted,
                          ttft_s=first - job.submitted)

    def cancelled(self, job: Job, produced: int) -> None:
        log.info("client left; request dropped", extra={"event": "cancelled", "tokens_generated": produced})
        if self.metrics:
            self.metrics.cancelled.inc()


def seed_for(seed: int | None) -> int:
    """The request's seed, or a fresh one: without a seed, sampling differs between requests, as clients expect."""
    return int(np.random.SeedSequence().entropy % (1 << 63)) if seed is None else seed
