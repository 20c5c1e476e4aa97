"""Prometheus metrics of `sparsetrt serve`, on prometheus-client, one registry per app (tests run several).

Every series carries `backend` and `model` labels so one dashboard can hold several deployments. Energy is a
counter only where it is measurable (a GPU backend with NVML's energy counter); elsewhere /health says why.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from sparsetrt.runtime.measure import _nvml, nvml_status

# Seconds; TTFT on a CPU reaches seconds under load, inter-token latency is milliseconds.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class ServeMetrics:
    def __init__(self, backend: str, model: str, precision: str, version: str, energy_counter=None):
        self.registry = CollectorRegistry()
        labels = {"backend": backend, "model": model}
        names = tuple(labels)

        def bound(metric):
            return metric.labels(**labels)

        self._labels = labels
        self._requests = Counter("sparsetrt_requests", "Completion requests answered, by HTTP status code",
                                 (*names, "code"), registry=self.registry)
        self._errors = Counter("sparsetrt_request_errors", "Completion requests answered with an error, by HTTP "
                               "status code and error type", (*names, "code", "type"), registry=self.registry)
        self.ttft = bound(Histogram("sparsetrt_time_to_first_token_seconds", "Request received -> first token "
                                    "chosen (queue wait included)", names, buckets=TTFT_BUCKETS,
                                    registry=self.registry))
        self.inter_token = bound(Histogram("sparsetrt_inter_token_seconds", "Time between consecutive tokens of "
                                           "one request", names, buckets=TOKEN_BUCKETS, registry=self.registry))
        self.queue_wait = bound(Histogram("sparsetrt_queue_wait_seconds", "Request received -> model thread starts "
                                          "it", names, buckets=TTFT_BUCKETS, registry=self.registry))
        self.duration = bound(Histogram("sparsetrt_request_duration_seconds", "Request received -> response "
                                        "finished (every status)", names, buckets=TTFT_BUCKETS,
                                        registry=self.registry))
        self.prompt_tokens = bound(Counter("sparsetrt_prompt_tokens", "Prompt tokens of completed requests", names,
                                           registry=self.registry))
        self.generated_tokens = bound(Counter("sparsetrt_generated_tokens", "Tokens generated for completed "
                                              "requests", names, registry=self.registry))
        self.cancelled = bound(Counter("sparsetrt_cancelled_requests", "Requests dropped by the model thread "
                                       "because the client disconnected", names, registry=self.registry))
        self.queue_depth = bound(Gauge("sparsetrt_queue_depth", "Requests waiting for the model thread", names,
                                       registry=self.registry))
        self.running = bound(Gauge("sparsetrt_running_requests", "Requests in the running batch (prefilling or "
                                   "decoding)", names, registry=self.registry))
        self.batch_size = bound(Histogram("sparsetrt_batch_size", "Rows in each decode step of the running batch",
                                          names, buckets=BATCH_BUCKETS, registry=self.registry))
        self.batch_tokens = bound(Gauge("sparsetrt_batch_kv_tokens", "KV-cache positions the running batch holds "
                                        "(rows x widest past, padding included)", names, registry=self.registry))
        self.repack = bound(Gauge("sparsetrt_batch_repack_seconds", "Model-thread seconds spent joining new rows "
                                  "into the batch's KV cache and compacting it when rows retire (since start)",
                                  names, registry=self.registry))
        Info("sparsetrt_server", "What this server serves", registry=self.registry).info(
            {**labels, "precision": precision, "version": version})
        if energy_counter is not None:
            self.registry.register(_EnergyCollector(energy_counter, labels))

    def add_adaptive(self, variants: list[str]) -> None:
        """`serve --adaptive`: decisions, escalations and audits per variant, and the controller's price of cost."""
        names = (*self._labels, "variant")
        self._adaptive = {kind: Counter(f"sparsetrt_adaptive_{kind}s", help_text, names, registry=self.registry)
                          for kind, help_text in (
                              ("decision", "Requests the adaptive controller sent to each variant"),
                              ("escalation", "Requests handed to the dense variant mid-generation, by the variant "
                                             "they started on"),
                              ("audit", "Requests also run on the dense variant to measure quality, by variant"))}
        for counter in self._adaptive.values():
            for variant in variants:
                counter.labels(**self._labels, variant=variant)  # every variant shows, at 0 until used
        self.adaptive_lam = Gauge("sparsetrt_adaptive_lambda", "The controller's price of cost (nats per unit of "
                                  "cost relative to dense)", tuple(self._labels), registry=self.registry
                                  ).labels(**self._labels)

    def count_adaptive(self, kind: str, variant: str) -> None:
        self._adaptive[kind].labels(**self._labels, variant=variant).inc()

    def count_response(self, code: int) -> None:
        self._requests.labels(**self._labels, code=str(code)).inc()

    def count_error(self, code: int, kind: str) -> None:
        self._errors.labels(**self._labels, code=str(code), type=kind).inc()

    def set_load(self, queued: int, running: int | None = None, batch_tokens: int | None = None,
                 repack_s: float | None = None) -> None:
        """What changed: the queue always, the batch's gauges when the model thread reports them."""
        self.queue_depth.set(queued)
        for gauge, value in ((self.running, running), (self.batch_tokens, batch_tokens), (self.repack, repack_s)):
            if value is not None:
                gauge.set(value)

    def observe_completion(self, done) -> None:
        """A finished request (serve.worker.Completion)."""
        self.prompt_tokens.inc(done.prompt_tokens)
        self.generated_tokens.inc(done.completion_tokens)
        self.ttft.observe(done.ttft_s)
        self.queue_wait.observe(done.queue_s)


class _EnergyCollector:
    """sparsetrt_energy_joules_total: GPU energy since the server started, read at scrape time from NVML's
    counter (a difference of two readings; never polled power, see the field notes on zero readings)."""

    def __init__(self, read_joules, labels: dict):
        self.read_joules, self.labels = read_joules, labels
        self.start = read_joules()

    def collect(self):
        family = CounterMetricFamily("sparsetrt_energy_joules", "GPU energy used since the server started "
                                     "(NVML total-energy counter)", labels=list(self.labels))
        family.add_metric(list(self.labels.values()), self.read_joules() - self.start)
        yield family


def nvml_energy_counter(backend: str):
    """A function returning the GPU's total energy in joules, or (None, why) where it cannot be measured."""
    if backend != "tensorrt":
        return None, f"{backend} backend runs on the CPU here; NVML measures NVIDIA GPUs only"

    ok, reason = nvml_status()
    if not ok:
        return None, reason
    nvml, handle = _nvml()
    try:
        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as exc:
        return None, f"NVML has no energy counter on this GPU ({exc})"
    return (lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0), "nvml-energy-counter"


def scrape_counts(text: str) -> dict:
    """From a /metrics page: completion responses by status code, and tokens generated (summed over labels)."""
    counts = {"requests": {}, "generated_tokens": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sparsetrt_requests_total":
                code = sample.labels["code"]
                counts["requests"][code] = counts["requests"].get(code, 0) + int(sample.value)
            elif sample.name == "sparsetrt_generated_tokens_total":
                counts["generated_tokens"] += sample.value
    return counts


def scrape_batching(text: str) -> dict:
    """From a /metrics page: decode steps, mean rows per step, the cumulative batch-size buckets {upper edge:
    steps}, mean inter-token latency and the model thread's re-packing seconds."""
    values = {"sparsetrt_batch_size_count": 0.0, "sparsetrt_batch_size_sum": 0.0,
              "sparsetrt_inter_token_seconds_count": 0.0, "sparsetrt_inter_token_seconds_sum": 0.0,
              "sparsetrt_batch_repack_seconds": 0.0}
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sparsetrt_batch_size_bucket" and sample.labels["le"] != "+Inf":
                edge = float(sample.labels["le"])
                buckets[edge] = buckets.get(edge, 0.0) + sample.value
            elif sample.name in values:
                values[sample.name] += sample.value
    steps = values["sparsetrt_batch_size_count"]
    tokens = values["sparsetrt_inter_token_seconds_count"]
    return {"steps": steps, "mean_batch": values["sparsetrt_batch_size_sum"] / steps if steps else float("nan"),
            "batch_buckets": buckets,
            "itl_mean_s": values["sparsetrt_inter_token_seconds_sum"] / tokens if tokens else float("nan"),
            "repack_s": values["sparsetrt_batch_repack_seconds"]}
