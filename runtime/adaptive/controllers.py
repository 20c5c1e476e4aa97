"""Controllers that pick, per input, which variant of a model serves it (sparsetrt.runtime.adaptive.variant_set).

Every controller sees the probe's feature vector x (sparsetrt.runtime.adaptive.features) and each arm's predicted marginal
cost for this input relative to the dense variant (the probe's own variant reuses the probe's prefill), and
returns an arm index. Reward = quality - lam * relative cost, where quality is minus the mean NLL per token of a
reference continuation (the true text offline; the dense variant's own choices when serving). Quality is only
known for audited requests, which are also run on the dense variant, so what is learned is each arm's quality
*gap* to dense on this input: the difficulty every arm shares (a few nats between easy and hard text) cancels,
and the regression only has to explain the loss that pruning and quantization add.

- LinUCB and Thompson sampling: one ridge regression of the gap on design(x) per non-dense arm (disjoint linear
  bandit, Li et al. 2010; Agrawal & Goyal 2013); dense's gap is 0 by definition. design(x) adds mean NLL squared:
  the gap is largest at middling NLL (code, docs) and small on both very predictable and very random text. Cost is
  not learned: it is predicted from the variant set's measured cost model and corrected by the ratio of observed
  to predicted cost, so exploration is spent on the unknown (quality) only.
- lam is either fixed or, given a budget (mean relative cost), a Lagrange multiplier updated by dual ascent after
  every request: lam += eta * (cost - budget), floored at 0.
- StaticThreshold: the cheap arm unless one feature crosses a threshold fitted offline, then the dense arm.
- Static: one arm always. (The oracle needs every arm's outcome, so it lives in the offline evaluation.)
- Per-token escalation (`entropy_threshold`): while a non-dense arm generates, a token whose predictive entropy
  exceeds the threshold hands the rest of the request to the dense arm. The threshold is learned from audited
  tokens: the entropy at which the cheap arm's local rate of disagreeing with dense crosses one half.

State is JSON (numbers, lists, the RNG's state) so a restarted server continues where it stopped; a corrupt or
mismatched state file is reported, set aside as <file>.corrupt and replaced by a fresh controller.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparsetrt.artifacts import write_json
from sparsetrt.errors import SparsetrtError
from sparsetrt.runtime.adaptive.features import FEATURES
from sparsetrt.runtime.settings import ControllerSettings

log = logging.getLogger("sparsetrt.adaptive")
STATE_VERSION = 1
ESCALATION_SAMPLES = 4000  # audited tokens kept for the escalation threshold (a sliding window)
DESIGN_DIM = len(FEATURES) + 1


def design(x: np.ndarray) -> np.ndarray:
    """The controllers' regressors: the features plus mean NLL squared."""
    return np.append(x, x[FEATURES.index("mean_nll")] ** 2)


@dataclass
class Arms:
    """The variants a controller chooses among: names, which one is dense (the quality reference) and which one
    is the probe (the cheapest)."""

    names: list[str]
    dense: int
    probe: int

    def index(self, name: str) -> int:
        return self.names.index(name)


@dataclass
class Controller:
    arms: Arms
    settings: ControllerSettings
    dim: int = DESIGN_DIM
    lam: float | None = None
    covariance: np.ndarray = field(default=None)   # [arms, d, d] A^-1 of the ridge precision A, kept by
                                                   # Sherman-Morrison updates (A itself is never needed)
    moment: np.ndarray = field(default=None)       # [arms, d] sum of gap * design(x)
    cost_ratio: np.ndarray = field(default=None)   # [arms] observed / predicted cost (running mean)
    cost_seen: np.ndarray = field(default=None)    # [arms] costs observed
    decisions: np.ndarray = field(default=None)    # [arms]
    audits: int = 0
    threshold: dict = field(default_factory=dict)  # threshold policy: {"feature": i, "value": v}
    entropy_threshold: float | None = None
    escalation_samples: list = field(default_factory=list)  # [entropy, agreed] of audited non-dense tokens
    rng: np.random.Generator = None

    def __post_init__(self):
        k, d = len(self.arms.names), self.dim
        if self.lam is None:
            self.lam = self.settings.lam
        if self.covariance is None:
            self.covariance = np.stack([np.eye(d) / self.settings.ridge] * k)
            self.moment = np.zeros((k, d))
            self.cost_ratio = np.ones(k)
            self.cost_seen = np.zeros(k)
            self.decisions = np.zeros(k, dtype=np.int64)
        if self.rng is None:
            self.rng = np.random.default_rng(self.settings.seed)

    # -- deciding ---------------------------------------------------------------------------------------------
    def coefficients(self) -> np.ndarray:
        """[arms, d] ridge estimate of each arm's gap coefficients (A^-1 b)."""
        return np.einsum("kij,kj->ki", self.covariance, self.moment)

    def predicted_gap(self, z: np.ndarray) -> np.ndarray:
        """Each arm's expected quality minus dense's, for regressors z = design(x)."""
        return self.coefficients() @ z

    def decide(self, x: np.ndarray, relative_costs: np.ndarray) -> int:
        """The arm for an input with features x, given each arm's predicted cost relative to dense."""
        policy = self.settings.policy
        if policy == "static":
            arm = self.arms.index(self.settings.static_arm)
        elif policy == "threshold":
            if not self.threshold:
                raise SparsetrtError("the threshold policy has not been fitted; run `make bench-adaptive` or pass "
                                     "a state file written by it")
            hard = x[self.threshold["feature"]] > self.threshold["value"]
            arm = self.arms.dense if hard else self.threshold["cheap"]
        else:
            costs = np.asarray(relative_costs, dtype=np.float64) * self.cost_ratio
            z = design(x)
            if policy == "linucb":
                width = np.sqrt(np.maximum(np.einsum("i,kij,j->k", z, self.covariance, z), 0.0))
                gap = self.predicted_gap(z) + self.settings.alpha * width
            else:  # Thompson: one draw of each arm's coefficients from its Gaussian posterior
                theta = self.coefficients()
                chol = np.linalg.cholesky(self.covariance * self.settings.noise ** 2
                                          + 1e-12 * np.eye(self.dim))
                draws = theta + np.einsum("kij,kj->ki", chol, self.rng.standard_normal(theta.shape))
                gap = draws @ z
            gap[self.arms.dense] = 0.0  # the reference: no gap, no uncertainty
            arm = int(np.argmax(gap - self.lam * costs))
        self.decisions[arm] += 1
        return arm

    def should_audit(self) -> bool:
        return bool(self.rng.random() < self.settings.audit_fraction)

    # -- learning ---------------------------------------------------------------------------------------------
    def observe_quality(self, arm: int, x: np.ndarray, quality: float, dense_quality: float) -> None:
        """An audited outcome: this arm's and the dense arm's quality on an input with features x."""
        if arm == self.arms.dense:
            return
        z = design(x)
        cov = self.covariance[arm]
        cz = cov @ z
        self.covariance[arm] = cov - np.outer(cz, cz) / (1.0 + z @ cz)  # Sherman-Morrison
        self.moment[arm] += (quality - dense_quality) * z

    def observe_cost(self, arm: int, relative_cost: float, predicted: float) -> None:
        """The request's measured cost (relative to dense) next to what the cost model predicted; with a budget
        the multiplier moves towards spending exactly the budget."""
        if predicted > 0:
            self.cost_seen[arm] += 1
            self.cost_ratio[arm] += (relative_cost / predicted - self.cost_ratio[arm]) / self.cost_seen[arm]
        if self.settings.budget is not None:
            self.lam = max(0.0, self.lam + self.settings.eta * (relative_cost - self.settings.budget))

    def observe_tokens(self, entropies, agreed) -> None:
        """Audited tokens of a non-dense arm: entropy when it chose, and whether dense chose the same."""
        self.escalation_samples.extend([float(e), bool(a)] for e, a in zip(entropies, agreed))
        del self.escalation_samples[:-ESCALATION_SAMPLES]
        self.entropy_threshold = fit_entropy_threshold(self.escalation_samples)

    def escalate(self, arm: int, entropy: float) -> bool:
        return (self.settings.escalation and arm != self.arms.dense and self.entropy_threshold is not None
                and entropy > self.entropy_threshold)

    # -- persistence ------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"version": STATE_VERSION, "policy": self.settings.policy, "arms": self.arms.names,
                "dense": self.arms.dense, "probe": self.arms.probe, "features": list(FEATURES), "design": DESIGN_DIM,
                "lam": self.lam,
                "covariance": self.covariance.tolist(),
                "moment": self.moment.tolist(), "cost_ratio": self.cost_ratio.tolist(),
                "cost_seen": self.cost_seen.tolist(), "decisions": self.decisions.tolist(), "audits": self.audits,
                "threshold": self.threshold, "entropy_threshold": self.entropy_threshold,
                "escalation_samples": self.escalation_samples, "rng": self.rng.bit_generator.state}

    def save(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.state())

    @classmethod
    def from_state(cls, state: dict, arms: Arms, settings: ControllerSettings) -> "Controller":
        """Raises ValueError when the state does not belong to these arms and features."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state version {state.get('version')!r}, expected {STATE_VERSION}")
        if (state.get("arms"), state.get("features"), state.get("design")) != (arms.names, list(FEATURES), DESIGN_DIM):
            raise ValueError(f"state is for variants {state.get('arms')} and features {state.get('features')}, "
                             f"not {arms.names} and {list(FEATURES)}")
        k, d = len(arms.names), DESIGN_DIM
        shapes = {"covariance": (k, d, d), "moment": (k, d), "cost_ratio": (k,), "cost_seen": (k,)}
        arrays = {name: np.asarray(state[name], dtype=np.float64) for name in shapes}
        for name, shape in shapes.items():
            if arrays[name].shape != shape or not np.all(np.isfinite(arrays[name])):
                raise ValueError(f"'{name}' has shape {arrays[name].shape} or non-finite values; expected {shape}")
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        threshold = state.get("entropy_threshold")
        # a fixed price is the user's to set; under a budget the multiplier continues where it stopped
        lam = settings.lam if settings.budget is None else float(state["lam"])
        return cls(arms, settings, d, lam=lam, decisions=np.asarray(state["decisions"], np.int64),
                   audits=int(state["audits"]), threshold=dict(state.get("threshold") or {}),
                   entropy_threshold=None if threshold is None else float(threshold),
                   escalation_samples=[list(s) for s in state.get("escalation_samples", [])], rng=rng, **arrays)


def load_controller(path: Path | None, arms: Arms, settings: ControllerSettings) -> Controller:
    """The controller saved at `path` when there is one that fits these arms, else a fresh one. A file that cannot
    be read back is reported, kept beside as <name>.corrupt for inspection, and replaced by a fresh controller."""
    settings.check_arms(arms.names)
    if path is None or not Path(path).exists():
        return Controller(arms, settings)
    path = Path(path)
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        controller = Controller.from_state(state, arms, settings)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
        aside = path.with_name(f"{path.name}.corrupt")
        path.replace(aside)
        log.warning("controller state %s is unusable (%s: %s); moved to %s, starting a fresh controller",
                    path, type(exc).__name__, exc, aside,
                    extra={"event": "state_replaced", "path": str(path), "error": str(exc)})
        return Controller(arms, settings)
    return controller


def fit_entropy_threshold(samples, min_tokens: int = 20) -> float | None:
    """The entropy above which escalating pays: scanning tokens from the most to the least unsure, each one the
    cheap arm got wrong counts +1 for escalating it and each one it got right -1; τ sits where that running sum
    peaks (the local disagreement rate crosses one half). None while fewer than `min_tokens` audited tokens lie
    above any τ with a positive sum (never escalate on no evidence)."""
    if len(samples) < min_tokens:
        return None
    data = np.asarray(samples, dtype=np.float64)
    order = np.argsort(-data[:, 0], kind="stable")
    entropy, disagree = data[order, 0], 1.0 - data[order, 1]
    score = np.cumsum(2 * disagree - 1)
    score[: min_tokens - 1] = -np.inf
    k = int(np.argmax(score))
    if score[k] <= 0:
        return None
    return float((entropy[k] + entropy[k + 1]) / 2) if k + 1 < len(entropy) else float(entropy[k]) - 1e-6


def fit_threshold(features: np.ndarray, qualities: np.ndarray, costs: np.ndarray, cheap: int, dense: int,
                  lam: float, feature: int = FEATURES.index("mean_nll")) -> dict:
    """The static-threshold baseline fitted on training inputs: the value of one feature above which sending the
    input to dense maximises mean reward. features [n, d]; qualities and costs [n, arms] (relative costs)."""
    values = np.unique(features[:, feature])
    candidates = np.concatenate([[-np.inf], values])
    reward_cheap = qualities[:, cheap] - lam * costs[:, cheap]
    reward_dense = qualities[:, dense] - lam * costs[:, dense]
    best = max(candidates, key=lambda t: np.where(features[:, feature] > t, reward_dense, reward_cheap).mean())
    return {"feature": int(feature), "value": float(best), "cheap": int(cheap), "name": FEATURES[feature]}


def timed_decision(controller: Controller, x: np.ndarray, relative_costs: np.ndarray) -> tuple[int, float]:
    """(arm, microseconds the decision took)."""
    start = time.perf_counter_ns()
    arm = controller.decide(x, relative_costs)
    return arm, (time.perf_counter_ns() - start) / 1000
