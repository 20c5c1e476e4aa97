"""A live `sparsetrt serve` app on a loopback port inside the test process, and a runner that can be slowed down
(so queueing, timeouts and disconnects happen at human time scales on a tiny model)."""

from __future__ import annotations

import threading
import time

import httpx

from sparsetrt.runtime.serve.process import free_port, wait_until_ready

__all__ = ["free_port", "LiveServer", "SlowServed", "wait_until_ready", "metric_value"]


class SlowRunner:
    """Delegates to a real runner; each forward step first sleeps `delay` seconds. The end-of-sequence token is
    never chosen (its logit is -inf), so a request runs its full max_tokens: timings in tests are predictable."""

    def __init__(self, runner, delay: float, eos_id: int = 2):
        self.runner, self.delay, self.eos_id = runner, delay, eos_id

    def step(self, *args):
        time.sleep(self.delay)
        logits, cache = self.runner.step(*args)
        logits = logits.copy()
        logits[:, self.eos_id] = -float("inf")
        return logits, cache

    def __getattr__(self, name):
        return getattr(self.runner, name)


class SlowServed:
    """A ServedModel whose runner is a SlowRunner."""

    def __init__(self, served, delay: float):
        self.served, self.delay = served, delay

    def load(self):
        runner, tokenizer = self.served.load()
        return SlowRunner(runner, self.delay), tokenizer

    def __getattr__(self, name):
        return getattr(self.served, name)


class LiveServer:
    """uvicorn in a thread (no signal handlers there); `with LiveServer(served, max_queue=2) as s: s.client.post(...)`."""

    def __init__(self, served, wait: bool = True, **settings):
        """`wait`: enter once /health says ready (False: as soon as the thread runs, the model still loading)."""
        import uvicorn

        from sparsetrt.runtime.serve.app import create_app
        from sparsetrt.runtime.settings import ServeSettings

        self.settings = ServeSettings(port=free_port(), **settings)
        self.app = create_app(served, self.settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.settings.port, log_config=None,
                                access_log=False, lifespan="on", timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{self.settings.port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.wait = wait

    def __enter__(self):
        self.thread.start()
        self.client = httpx.Client(base_url=self.url, timeout=60)
        if self.wait:
            wait_until_ready(self.url, timeout_s=120)
        return self

    def __exit__(self, *exc):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)

    def metric(self, name: str, **labels) -> float:
        return metric_value(self.client.get("/metrics").text, name, **labels)


def metric_value(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when there is none)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
