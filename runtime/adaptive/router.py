"""`sparsetrt serve --adaptive POLICY`: every request goes to the variant a controller picks for it.

AdaptiveRunner looks like one runner to the generation loop (step / empty_cache / synchronize), so the server,
its streaming, limits and metrics stay as they are. Per request:
1. the probe variant (the cheapest) prefills the prompt; its logits give the features (sparsetrt.runtime.adaptive.features);
2. the controller picks a variant; if it is the probe's, decoding continues from the probe's KV cache, otherwise
   the chosen variant prefills the prompt itself;
3. with escalation on, a token whose predictive entropy crosses the learned threshold hands the rest of the
   request to the dense variant (which prefills everything so far);
4. after the request, an audited one (the controller's audit fraction) is run once through the dense variant,
   teacher-forced over prompt + output: quality = minus the mean NLL the serving variant gave to dense's own
   choices, for the chosen arm and for dense; the state file is then saved (atomically).
The server batches continuously with one batch per variant (sparsetrt.runtime.serve.scheduler): it calls
open_request / after_token / close_request with each request's own state. The single-request interface
(begin_request, empty_cache, step, finish_request: the generation loop's, used by the server's warm-up and by
`generate`-style callers) keeps one request's state on the runner.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparsetrt.errors import SparsetrtError
from sparsetrt.layout import VARIANT_MANIFEST
from sparsetrt.models import load_tokenizer
from sparsetrt.runtime.adaptive.controllers import Arms, load_controller
from sparsetrt.runtime.adaptive.features import log_softmax, probe_features, token_stats
from sparsetrt.runtime.adaptive.variant_set import CostModel, decision_costs, read_variant_set
from sparsetrt.runtime.backends import make_runner
from sparsetrt.runtime.backends.base import position_ids_for
from sparsetrt.runtime.serve.served_model import DEFAULT_MAX_PROMPT_TOKENS, context_tokens
from sparsetrt.runtime.settings import ControllerSettings

log = logging.getLogger("sparsetrt.adaptive")


@dataclass
class _Request:
    """One request's routing state (what the generation loop holds as `cache`)."""

    new_tokens: int
    arm: int | None = None
    first_arm: int | None = None
    cache: object = None
    ids: list = field(default_factory=list)          # prompt + every token fed so far
    prompt_tokens: int = 0
    features: np.ndarray | None = None
    audited: bool = False
    escalated_at: int | None = None
    logp_rows: list = field(default_factory=list)    # audited: log-probs of every served position
    entropies: list = field(default_factory=list)    # entropy of each served position before any escalation
    argmaxes: list = field(default_factory=list)
    model_s: float = 0.0                             # every forward pass of this request (its share of a batch)
    probe_s: float = 0.0                             # the probe's prefill and features
    live: bool = False                               # a client's request (the warm-up decides and learns nothing)


class AdaptiveRunner:
    def __init__(self, runners: list, arms: Arms, controller, cost_models: list[CostModel],
                 state_path: Path | None = None):
        self.runners, self.arms, self.controller = runners, arms, controller
        self.cost_models, self.state_path = cost_models, state_path
        self.request: _Request | None = None
        self.metrics = None
        self.default_new_tokens = 32
        self.live = False  # between begin_request and finish_request; the worker's warm-up is not a request

    # -- the generation loop's interface ------------------------------------------------------------------------
    def begin_request(self, max_new_tokens: int) -> None:
        self.default_new_tokens = max_new_tokens
        self.live = True

    def empty_cache(self, batch: int):
        if batch != 1:
            raise SparsetrtError("this interface routes one request at a time (batch 1); batches route per request "
                                 "through open_request")
        self.request = _Request(self.default_new_tokens, live=self.live)
        return self.request

    def synchronize(self) -> None:
        for runner in self.runners:
            runner.synchronize()

    def step(self, input_ids, attention_mask, position_ids, cache):
        request = cache
        start = time.perf_counter()
        if request.arm is None:
            logits = self._prefill(request, np.asarray(input_ids), np.asarray(attention_mask))
        else:
            request.ids.extend(int(t) for t in np.asarray(input_ids)[0])
            logits, request.cache = self.runners[request.arm].step(input_ids, attention_mask, position_ids,
                                                                   request.cache)
            logits = self._after_step(request, logits)
        request.model_s += time.perf_counter() - start
        return logits, request

    # -- the batching scheduler's interface: the request's state travels with its row -----------------------------
    def open_request(self, prompt_ids: list[int], max_new_tokens: int) -> tuple[_Request, np.ndarray]:
        """Route a new request: (its state, with .arm and .cache of the chosen variant's prefill; the logits of the
        prompt's last position [1, vocab])."""
        request = _Request(max_new_tokens, live=True)
        ids = np.asarray([prompt_ids], dtype=np.int64)
        start = time.perf_counter()
        logits = self._prefill(request, ids, np.ones_like(ids))
        request.model_s += time.perf_counter() - start
        return request, logits

    def after_token(self, request: _Request, fed: int, logits: np.ndarray, step_share_s: float) -> np.ndarray:
        """After a batched decode step that fed `fed`: record, maybe escalate (then .arm is dense's and .cache the
        dense prefill of everything so far, and the logits are dense's). `step_share_s`: this row's share of the
        step, what the cost feedback counts for it."""
        request.ids.append(fed)
        start = time.perf_counter()
        logits = self._after_step(request, logits)
        request.model_s += step_share_s + time.perf_counter() - start
        return logits

    def close_request(self, request: _Request, tokens: list[int]) -> None:
        self._finish(request, tokens)

    # -- routing ------------------------------------------------------------------------------------------------
    def predicted_relative(self, prompt_tokens: int, new_tokens: int) -> np.ndarray:
        return decision_costs(self.cost_models, self.arms.dense, self.arms.probe, prompt_tokens, new_tokens)

    def _prefill(self, request: _Request, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        request.ids = [int(t) for t in ids[0]]
        request.prompt_tokens = len(request.ids)
        probe = self.runners[self.arms.probe]
        start = time.perf_counter()
        prompt_logits, probe_cache = probe.prefill(ids, mask)
        request.features = probe_features(prompt_logits[0], ids[0])
        request.probe_s = time.perf_counter() - start
        if not request.live:  # warm-up: run every variant once (ORT optimises on first use), decide and learn nothing
            for runner in self.runners:
                runner.prefill(ids, mask)
            request.arm = request.first_arm = self.arms.probe
            request.cache = probe_cache
            return prompt_logits[:, -1]
        arm = self.controller.decide(request.features, self.predicted_relative(len(request.ids), request.new_tokens))
        request.arm = request.first_arm = arm
        request.audited = arm != self.arms.dense and self.controller.should_audit()
        self._count("decision", self.arms.names[arm])
        if arm == self.arms.probe:
            logits, request.cache = prompt_logits[:, -1], probe_cache
        else:
            runner = self.runners[arm]
            logits, request.cache = runner.step(ids, mask, position_ids_for(mask, mask.shape[1]),
                                                runner.empty_cache(1))
        return self._after_step(request, logits)

    def _after_step(self, request: _Request, logits: np.ndarray) -> np.ndarray:
        """Record what the audit and the escalation threshold learn from; escalate when the token is too unsure.
        Requests neither audited nor escalating skip it: a vocabulary-wide softmax per token is not free."""
        tracking = request.audited or self.controller.settings.escalation
        if tracking and request.escalated_at is None:
            stats = token_stats(logits[:1])
            entropy = float(stats["entropy"][0])
            request.entropies.append(entropy)
            request.argmaxes.append(int(stats["argmax"][0]))
            if self.controller.escalate(request.arm, entropy):
                request.escalated_at = len(request.entropies) - 1
                dense = self.runners[self.arms.dense]
                ids = np.asarray([request.ids], dtype=np.int64)
                full, request.cache = dense.prefill(ids, np.ones_like(ids))
                logits = full[:, -1]
                request.arm = self.arms.dense
                self._count("escalation", self.arms.names[request.first_arm])
        if request.audited:
            request.logp_rows.append(log_softmax(logits[0]))
        return logits

    def finish_request(self, tokens: list[int]) -> None:
        """After the loop: audit (when drawn), learn, save the state. `tokens`: what was served."""
        request, self.request, self.live = self.request, None, False
        self._finish(request, tokens)

    def _finish(self, request: _Request | None, tokens: list[int]) -> None:
        if request is None or request.arm is None or not tokens:
            return
        new = len(tokens)
        dense_ms = self.cost_models[self.arms.dense].request(request.prompt_tokens, new)
        predicted = self.predicted_relative(request.prompt_tokens, new)[request.first_arm]
        chosen_ms = (request.model_s - request.probe_s) * 1000  # what `predicted` estimates: the probe is sunk
        self.controller.observe_cost(request.first_arm, chosen_ms / dense_ms, float(predicted))
        if request.audited:
            self._audit(request, tokens)
        self.save()

    def _audit(self, request: _Request, tokens: list[int]) -> None:
        dense = self.runners[self.arms.dense]
        ids = np.asarray([request.ids[:request.prompt_tokens] + list(tokens)], dtype=np.int64)
        logits = dense.logits(ids)[0, request.prompt_tokens - 1:request.prompt_tokens - 1 + len(tokens)]
        reference = log_softmax(logits)
        target = reference.argmax(axis=-1)                                       # dense's own choices
        served = np.stack(request.logp_rows[:len(tokens)])
        quality = float(served[np.arange(len(target)), target].mean())  # minus the NLL of dense's choices
        dense_quality = float(reference.max(axis=-1).mean())
        self.controller.audits += 1
        self.controller.observe_quality(request.first_arm, request.features, quality, dense_quality)
        seen = len(request.entropies) if request.escalated_at is None else request.escalated_at + 1
        seen = min(seen, len(target))
        agreed = np.asarray(request.argmaxes[:seen]) == target[:seen]
        self.controller.observe_tokens(request.entropies[:seen], agreed)
        self._count("audit", self.arms.names[request.first_arm])

    def save(self) -> None:
        if self.state_path is not None:
            self.controller.save(self.state_path)
        if self.metrics is not None:
            self.metrics.adaptive_lam.set(self.controller.lam)

    def attach_metrics(self, metrics) -> None:
        metrics.add_adaptive(self.arms.names)
        self.metrics = metrics
        metrics.adaptive_lam.set(self.controller.lam)

    def _count(self, kind: str, variant: str) -> None:
        if self.metrics is not None:
            self.metrics.count_adaptive(kind, variant)


@dataclass(frozen=True)
class AdaptiveServed:
    """What `serve --adaptive` serves: the variant set behind one model name (the ServedModel interface)."""

    name: str
    manifest_path: Path
    manifest: dict
    settings: ControllerSettings
    state_path: Path
    max_prompt_tokens: int
    max_context_tokens: int

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    @property
    def precision(self) -> str:
        return f"adaptive-{self.settings.policy}"

    @property
    def tokenizer_dir(self) -> Path:
        return Path(self.manifest["tokenizer"])

    @property
    def path(self) -> Path:
        return self.manifest_path

    def arms(self) -> Arms:
        names = [v["name"] for v in self.manifest["variants"]]
        return Arms(names, names.index(self.manifest["dense"]), names.index(self.manifest["probe"]))

    def load(self):
        arms = self.arms()
        controller = load_controller(self.state_path, arms, self.settings)
        runners = [make_runner(self.backend, v["path"], device="cpu" if self.backend == "onnxruntime" else "auto")
                   for v in self.manifest["variants"]]
        costs = [CostModel.from_manifest(v) for v in self.manifest["variants"]]
        return AdaptiveRunner(runners, arms, controller, costs, self.state_path), self.load_tokenizer()

    def load_tokenizer(self):
        return load_tokenizer(self.tokenizer_dir)

    def describe(self) -> dict:
        return {"name": self.name, "backend": self.backend, "precision": self.precision,
                "path": str(self.manifest_path), "max_prompt_tokens": self.max_prompt_tokens,
                "max_context_tokens": self.max_context_tokens,
                "adaptive": {"policy": self.settings.policy, "variants": self.arms().names,
                             "dense": self.manifest["dense"], "probe": self.manifest["probe"],
                             "state": str(self.state_path), "audit_fraction": self.settings.audit_fraction,
                             "escalation": self.settings.escalation, "lam": self.settings.lam,
                             "budget": self.settings.budget}}


def resolve_adaptive(variants: str | Path, settings: ControllerSettings, name: str | None = None,
                     state_path: str | Path | None = None, max_prompt_tokens: int | None = None) -> AdaptiveServed:
    """Check the variant set and the controller settings before the server binds."""
    manifest = read_variant_set(Path(variants))
    manifest_path = Path(variants) if Path(variants).is_file() else Path(variants) / VARIANT_MANIFEST
    names = [v["name"] for v in manifest["variants"]]
    settings.check_arms(names)
    if settings.policy == "threshold" and not _has_threshold(state_path):
        raise SparsetrtError("--adaptive threshold needs a fitted threshold: pass --controller-state "
                             "artifacts/adaptive/controller-threshold.json (make bench-adaptive fits it), or use "
                             "linucb / thompson")
    state = Path(state_path) if state_path else manifest_path.parent / f"controller-{settings.policy}.json"
    context = context_tokens(Path(manifest["tokenizer"]))
    limit = max_prompt_tokens or DEFAULT_MAX_PROMPT_TOKENS
    return AdaptiveServed(name=name or "adaptive", manifest_path=manifest_path,
                          manifest=manifest, settings=settings, state_path=state,
                          max_prompt_tokens=min(limit, context - 1), max_context_tokens=context)


def _has_threshold(state_path) -> bool:
    try:
        return bool(json.loads(Path(state_path).read_text()).get("threshold"))
    except (TypeError, OSError, ValueError, AttributeError):
        return False
