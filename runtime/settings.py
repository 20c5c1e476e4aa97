"""The runtime's settings and the names its options choose from, in a light module (the CLI builds its parsers
from it without importing torch, onnxruntime or a server stack): parity, sampling (generate and the server), the
server, its adaptive controller and the load test."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import field_validator

from sparsetrt.errors import SparsetrtError
from sparsetrt.export.settings import EvaluationSettings
from sparsetrt.settings import SEED_MAX, Settings, option

BACKENDS = ("pytorch", "onnxruntime", "tensorrt")              # runners by name (runtime/backends)
SERVE_PRECISIONS = ("auto", "fp32", "fp16", "int8", "int4")  # which file of an artifacts tree `serve` runs
BANDITS = ("linucb", "thompson")
POLICIES = (*BANDITS, "threshold", "static")                # the adaptive router's controllers


# Parity: what a report measures (runtime/parity/metrics.py computes them) and what a tolerance may name.
METRICS = ("positions", "max_abs_error", "mean_abs_error", "cosine_similarity", "min_cosine_similarity",
           "top1_agreement", "top1_near_ties", "top1_near_tie_flips", "top5_agreement", "kl_divergence",
           "max_kl_divergence", "perplexity_reference", "perplexity_candidate", "perplexity_rel_diff")
# Greedy generation from the same prompts (sparsetrt.runtime.generate.compare_generations), when run; the long_
# ones from a prompt longer than the model's sliding window, when it has one.
GENERATION_METRICS = ("generation_identical", "generation_first_divergence", "generation_prompts", "generation_tokens",
                      "long_generation_identical", "long_generation_first_divergence", "long_generation_tokens")
TOLERANCE_METRICS = (*METRICS, "generation_identical", "long_generation_identical")


def parse_tolerance_overrides(items) -> dict[str, dict[str, float]]:
    """["fp16.max_abs_error=0.5", ...] -> {"fp16": {"max_abs_error": 0.5}}."""
    out: dict[str, dict[str, float]] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        precision, dot, metric = key.strip().partition(".")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not dot or not precision or number is None:
            raise ValueError(f"{item!r} is not PRECISION.METRIC=VALUE, e.g. fp16.max_abs_error=0.5")
        if not math.isfinite(number):
            raise ValueError(f"{item!r}: a tolerance must be a finite number")
        if metric.strip() not in TOLERANCE_METRICS:
            raise ValueError(f"{item!r}: unknown parity metric {metric.strip()!r}; use one of "
                             f"{', '.join(sorted(TOLERANCE_METRICS))}")
        out.setdefault(precision.strip(), {})[metric.strip()] = number
    return out


class ParitySettings(EvaluationSettings):
    """[parity]: the evaluation text, the greedy generations and the tolerances a parity report checks."""

    generate_tokens: int = option(32, "greedy tokens compared token for token on 10 prompts (0 = skip)", ge=0,
                                  le=4096)
    tolerances: list[str] = option([], "override a tolerance, PRECISION.METRIC=VALUE, e.g. fp16.max_abs_error=0.5 "
                                       "(repeatable)", flag="--tol", style="repeat", metavar="PRECISION.METRIC=VALUE")

    @field_validator("tolerances")
    @classmethod
    def well_formed(cls, value: list[str]) -> list[str]:
        parse_tolerance_overrides(value)
        return value


class SamplingSettings(Settings):
    """Sampling (the same rules on the command line and in the server's requests)."""

    max_new_tokens: int = option(64, "most new tokens per prompt", ge=1, le=1_048_576)
    temperature: float = option(0.0, "0 = greedy; else softmax sampling from logits / temperature", ge=0, le=1000)
    top_k: int = option(0, "sample from the k most likely tokens (0 = all)", ge=0, le=10_000_000)
    top_p: float = option(1.0, "sample from the smallest set with this much probability", gt=0, le=1)
    seed: int = option(0, "random seed of sampling", ge=0, le=SEED_MAX)


class ServeSettings(Settings):
    """The server: where it listens, its queue, continuous batching and its limits."""

    host: str = option("127.0.0.1", "address to bind (default loopback: exposing a model is a deliberate act; "
                                    "0.0.0.0 in containers)", min_length=1)
    port: int = option(8000, "TCP port (0: any free one)", ge=0, le=65535)
    max_queue: int = option(64, "requests waiting for the model; one more gets 429", ge=1, le=1_000_000)
    max_batch: int = option(8, "requests decoded together; new ones join at step boundaries (1 = one at a time)",
                            ge=1, le=4096)
    max_batch_tokens: int = option(16384, "KV-cache positions the running batch may hold: rows x the largest prompt "
                                          "+ max_tokens among them (bounds its memory)", ge=1, le=1 << 30)
    prefill_chunk: int = option(256, "prompt tokens prefilled per step, between decode steps of the running batch, "
                                     "so a long prompt does not stall the streams (0 = whole prompts)", ge=0,
                                le=1 << 20)
    request_timeout_s: float = option(120.0, "seconds per request, queue wait included", flag="--request-timeout",
                                      gt=0, le=86_400)
    max_tokens_limit: int = option(256, "largest max_tokens a request may ask for", ge=1, le=1 << 20)
    max_body_bytes: int = option(256 * 1024, "largest request body", ge=1, le=1 << 30)
    graceful_timeout_s: float | None = option(None, "seconds in-flight requests get after SIGTERM (default: the "
                                                    "request timeout)", flag="--graceful-timeout", ge=0, le=86_400)
    log_level: Literal["debug", "info", "warning", "error"] = option("info", "server log level")


class ControllerSettings(Settings):
    """Adaptive routing (--adaptive)."""

    policy: Literal[POLICIES] = option("linucb", "the controller", cli=False)
    lam: float = option(0.25, "nats of NLL per unit of cost relative to dense, the price of compute (make "
                              "bench-adaptive reports the static frontier's slope as a guide)", ge=0, le=1e6)
    budget: float | None = option(None, "mean cost relative to dense to spend; lam then follows dual ascent towards "
                                        "it", gt=0, le=2)
    eta: float = option(0.5, "dual ascent step", ge=0, le=1e6, cli=False)
    alpha: float = option(0.3, "LinUCB exploration width (at 0.1 one bad first draw locks an arm out)", ge=0,
                          le=1e6, cli=False)
    noise: float = option(0.3, "Thompson posterior scale (nats)", ge=0, le=1e6, cli=False)
    ridge: float = option(1.0, "prior precision of each arm's quality regression", gt=0, le=1e6, cli=False)
    audit_fraction: float = option(0.1, "share of requests also run on the dense variant to learn quality", ge=0,
                                   le=1)
    escalation: bool = option(False, "hand a request to dense when a token's entropy crosses the learned threshold")
    static_arm: str | None = option(None, "with --adaptive static: the variant to serve", flag="--static-variant",
                                    min_length=1)
    seed: int = option(0, "the controller's seed", ge=0, le=SEED_MAX)

    def check_arms(self, arms: list[str]) -> "ControllerSettings":
        """The rule that needs the variant set: policy static names one of its variants."""
        if self.policy == "static" and self.static_arm not in arms:
            raise SparsetrtError(f"policy static needs one of the variants {', '.join(arms)} as --static-variant, "
                                 f"not {self.static_arm!r}")
        return self


class LoadSettings(Settings):
    """The load: clients, duration, requests."""

    url: str = option("http://127.0.0.1:8000", "the server", min_length=1)
    clients: int = option(32, "concurrent clients", ge=1, le=100_000)
    duration_s: float = option(60.0, "seconds", flag="--duration", gt=0, le=86_400)
    max_tokens: int = option(32, "max_tokens of each request", ge=1, le=1 << 20)
    stream_fraction: float = option(0.5, "share of requests sent with stream=true", ge=0, le=1)
    temperature: float = option(0.7, "sampling temperature of the requests", ge=0, le=1000, cli=False)
    seed: int = option(0, "the clients' seed", ge=0, le=SEED_MAX, cli=False)
    timeout_s: float = option(600.0, "client-side timeout (the server's own should fire first)", gt=0, le=86_400,
                              cli=False)
