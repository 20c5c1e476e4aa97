"""`make bench-adaptive`: does choosing a variant per input beat running one variant for every input?

Method (also in the README):
1. A stream of inputs of mixed difficulty: windows of WikiText-2 *valid* (else Python's docs), Python's docs
   (pydoc_data), this package's own source code, and two generated kinds: repetitive text (easy) and
   WikiText words shuffled (hard). Never the evaluation split. Each input is a prompt of random length and the
   true next `new_tokens` tokens; the stream is shuffled with the seed and split into a training and an
   evaluation half.
2. Every variant of the variant set serves every input, teacher-forced (sparsetrt.runtime.adaptive.variant_set
   .measure_request): measured prefill and decode latency, the NLL of each true token, the argmax and entropy at
   each position. The probe variant also yields the prompt features, and the time to compute them.
3. Policies replay the stream over that table in order: they learn on the training half (every request audited)
   and are scored on the evaluation half (a fraction audited, as when serving). A policy's cost per request is
   what it would spend: the probe prefill and features (reused when it picks the probe variant), the decision,
   the chosen variant's prefill + decode, an escalation's dense prefill, and the dense audit pass. Quality is the
   mean NLL of the true continuation and the share of positions whose argmax equals the dense variant's.
4. Static variants are the frontier: any static mixture's (cost, NLL) lies on their lower convex hull. A policy
   beats it when its NLL is below the hull at its own cost. The oracle picks the best variant per input in
   hindsight (no probe): the upper bound.
Writes adaptive.json (contract: per policy `policy, mean_cost, cost_unit, nll, agreement_with_dense,
decision_overhead_us`), adaptive.md and adaptive.png into `out`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
from tqdm import tqdm

import sparsetrt
from sparsetrt.artifacts import read_json, write_json
from sparsetrt.calibration.data import default_corpus
from sparsetrt.errors import SparsetrtError
from sparsetrt.models import load_tokenizer
from sparsetrt.runtime.adaptive.controllers import (
    Arms,
    fit_threshold,
    load_controller,
    timed_decision,
)
from sparsetrt.runtime.adaptive.features import probe_features, token_stats
from sparsetrt.runtime.adaptive.variant_set import CostModel, decision_costs, measure_request, read_variant_set
from sparsetrt.runtime.backends import make_runner
from sparsetrt.runtime.bench.adaptive_report import write_adaptive_report
from sparsetrt.runtime.bench.gpu import block_speedups
from sparsetrt.runtime.bench.settings import AdaptiveBenchSettings
from sparsetrt.runtime.settings import ControllerSettings

SOURCES = ("wikitext-valid", "python-docs", "sparsetrt-source", "repetitive", "shuffled")
GPU_COST_NOTE = ("not modelled: pass --gpu-cost benchmarks/gpu.json (`make bench-gpu` on a CUDA GPU measures the "
                 "dense / 2:4 ratios), else only the latency measured on the current backend is reported")
# Which GEMM measurement of `sparsetrt bench gpu` stands for a variant's precision.
GPU_DTYPE_OF = {"fp32": "fp16", "fp16": "fp16", "int8": "int8"}


# -- the stream -------------------------------------------------------------------------------------------------
def source_texts(seed: int) -> dict[str, tuple[str, str]]:
    """{source: (text, description)}."""
    wiki = default_corpus("valid")
    package = Path(sparsetrt.__file__).resolve().parent
    code = "\n\n".join(p.read_text() for p in sorted(package.rglob("*.py")))
    rng = random.Random(seed)
    words = wiki.text.split()
    patterns = ["1, 2, 3, 4, 5, 6, 7, 8, 9, 10", "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
                "a b c d e f g h i j k l m n o p q r s t u v w x y z", "The cat sat on the mat.",
                "def f(x):\n    return x\n", "<li>item</li>", "| 0 | 0 | 0 |", "red, green, blue,"]
    repetitive = "\n".join(rng.choice(patterns) for _ in range(4000))
    counting = " ".join(str(i) for i in range(20000))
    shuffled = list(words[:200000])
    rng.shuffle(shuffled)
    return {"wikitext-valid": (wiki.text, wiki.description),
            "python-docs": ("\n\n".join(topics[k] for k in sorted(topics)), "Python docs topics (pydoc_data.topics)"),
            "sparsetrt-source": (code, f"this package's Python source ({package})"),
            "repetitive": (repetitive + "\n" + counting, "generated: repeated short patterns and counting"),
            "shuffled": (" ".join(shuffled), f"generated: words of {wiki.description} in random order")}


def build_stream(tokenizer, settings: AdaptiveBenchSettings) -> tuple[list[dict], dict]:
    """(inputs in stream order, {source: description}). Each input: source, prompt ids, continuation ids."""
    rng = np.random.default_rng(settings.seed)
    inputs, described = [], {}
    for source, (text, description) in source_texts(settings.seed).items():
        ids = tokenizer(text, verbose=False)["input_ids"]
        described[source] = description
        for _ in range(settings.inputs_per_source):
            length = int(rng.integers(settings.min_prompt_tokens, settings.max_prompt_tokens + 1))
            start = int(rng.integers(0, len(ids) - length - settings.new_tokens))
            inputs.append({"source": source, "prompt": ids[start:start + length],
                           "continuation": ids[start + length:start + length + settings.new_tokens]})
    order = rng.permutation(len(inputs))
    return [inputs[i] for i in order], described


# -- the table: every variant on every input ---------------------------------------------------------------------
def measure_table(manifest: dict, inputs: list[dict], names: list[str], progress: bool = True) -> dict:
    """Per variant: prefill_ms [n], decode_ms [n], nll / argmax / entropy [n, new_tokens]; the probe variant's
    prompt features [n, d], feature_us [n]."""
    entries = {v["name"]: v for v in manifest["variants"]}
    table = {"variants": {}}
    for name in names:
        runner = make_runner(manifest["backend"], entries[name]["path"], device="cpu")
        first = inputs[0]
        measure_request(runner, first["prompt"], first["continuation"])  # warm-up: ORT optimises on first run
        probe = name == manifest["probe"]
        rows = {"prefill_ms": [], "decode_ms": [], "nll": [], "argmax": [], "entropy": []}
        features, feature_us = [], []
        for item in tqdm(inputs, desc=f"{name:>12}", unit="input", disable=not progress, mininterval=5):
            result = measure_request(runner, item["prompt"], item["continuation"], keep_prompt_logits=probe)
            stats = token_stats(result["logits"], np.asarray(item["continuation"]))
            rows["prefill_ms"].append(result["prefill_ms"])
            rows["decode_ms"].append(sum(result["step_ms"]))
            for key in ("nll", "argmax", "entropy"):
                rows[key].append(stats[key])
            if probe:
                start = time.perf_counter_ns()
                features.append(probe_features(result["prompt_logits"], item["prompt"]))
                feature_us.append((time.perf_counter_ns() - start) / 1000)
        table["variants"][name] = {k: np.asarray(v) for k, v in rows.items()}
        if probe:
            table["features"], table["feature_us"] = np.asarray(features), np.asarray(feature_us)
        del runner
    return table


def save_table(table: dict, path: Path, meta: dict) -> None:
    arrays = {f"{name}/{key}": value for name, rows in table["variants"].items() for key, value in rows.items()}
    arrays.update(features=table["features"], feature_us=table["feature_us"])
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
    tmp.replace(path)


def load_table(path: Path) -> tuple[dict, dict]:
    data = np.load(path)
    table = {"variants": {}, "features": data["features"], "feature_us": data["feature_us"]}
    for key in data.files:
        if "/" in key:
            name, field_name = key.rsplit("/", 1)
            table["variants"].setdefault(name, {})[field_name] = data[key]
    return table, json.loads(str(data["meta"]))


# -- replaying policies ------------------------------------------------------------------------------------------
@dataclass
class Replay:
    """What replaying one policy over the stream produced on the evaluation half."""

    policy: str
    lam: float
    cost_ms: list = field(default_factory=list)
    nll: list = field(default_factory=list)
    agreement: list = field(default_factory=list)
    decision_us: list = field(default_factory=list)
    choices: list = field(default_factory=list)
    audits: int = 0
    escalations: int = 0
    final_lam: float | None = None
    threshold: dict | None = None
    entropy_threshold: float | None = None

    def record(self, cost_ms: float, nll, agreement, arm: int, decision_us: float | None = None) -> None:
        """One evaluated input: its cost, per-position NLL and agreement (averaged here), the arm that served it."""
        self.cost_ms.append(float(cost_ms))
        self.nll.append(float(np.mean(nll)))
        self.agreement.append(float(np.mean(agreement)))
        self.choices.append(arm)
        if decision_us is not None:
            self.decision_us.append(decision_us)

    def row(self, names: list[str], cost_unit: str) -> dict:
        counts = {name: int(sum(1 for c in self.choices if c == i)) for i, name in enumerate(names)}
        return {"policy": self.policy, "lam": self.lam, "mean_cost": float(np.mean(self.cost_ms)),
                "cost_unit": cost_unit, "nll": float(np.mean(self.nll)),
                "agreement_with_dense": float(np.mean(self.agreement)),
                "decision_overhead_us": float(np.mean(self.decision_us)) if self.decision_us else 0.0,
                "decisions": counts, "audits": self.audits, "escalations": self.escalations,
                "final_lam": self.final_lam, "threshold": self.threshold, "entropy_threshold": self.entropy_threshold,
                "inputs": len(self.cost_ms)}


class StreamTable:
    """The measured table with the quantities every policy needs, indexed by (arm, input)."""

    def __init__(self, table: dict, meta: dict, manifest: dict, names: list[str]):
        self.names = names
        self.arms = Arms(names, names.index(manifest["dense"]), names.index(manifest["probe"]))
        rows = [table["variants"][n] for n in names]
        self.prefill = np.stack([r["prefill_ms"] for r in rows])        # [arms, n]
        self.decode = np.stack([r["decode_ms"] for r in rows])          # [arms, n]
        self.served = self.prefill + self.decode                         # [arms, n] a static variant's cost
        self.nll = np.stack([r["nll"] for r in rows])                   # [arms, n, t]
        self.argmax = np.stack([r["argmax"] for r in rows])
        self.entropy = np.stack([r["entropy"] for r in rows])
        self.features, self.feature_us = table["features"], table["feature_us"]
        self.agree = self.argmax == self.argmax[self.arms.dense][None]  # [arms, n, t]
        self.lengths = np.asarray(meta["prompt_lengths"])
        self.new_tokens = self.nll.shape[2]
        entries = {v["name"]: v for v in manifest["variants"]}
        self.cost_models = [CostModel.from_manifest(entries[n]) for n in names]
        self.n = self.prefill.shape[1]
        self.train = int(round(self.n * meta["train_fraction"]))

    def predicted_relative(self, i: int) -> np.ndarray:
        return decision_costs(self.cost_models, self.arms.dense, self.arms.probe, int(self.lengths[i]),
                              self.new_tokens)

    def frontier_slope(self) -> float:
        """Nats of NLL per unit of cost relative to dense that trading the probe variant for dense buys on the
        training half: the price at which mixing the two statically is indifferent."""
        train = slice(0, self.train)
        served = self.served[:, train]
        dense, probe = self.arms.dense, self.arms.probe
        gain = self.nll[probe, train].mean() - self.nll[dense, train].mean()
        extra = (served[dense] - served[probe]).mean() / served[dense].mean()
        return float(max(gain, 0.0) / extra) if extra > 0 else 0.0

    def dense_prefill_ms(self, tokens: int) -> float:
        return self.cost_models[self.arms.dense].prefill(tokens)


def replay_static(st: StreamTable, arm: int) -> Replay:
    r = Replay(f"static:{st.names[arm]}", 0.0)
    for i in range(st.train, st.n):
        r.record(st.served[arm, i], st.nll[arm, i], st.agree[arm, i], arm)
    return r


def replay_oracle(st: StreamTable, lam: float) -> Replay:
    """Best variant per input in hindsight: max -NLL - lam * measured cost relative to dense; no probe."""
    r = Replay("oracle", lam)
    served = st.served
    for i in range(st.train, st.n):
        reward = -st.nll[:, i].mean(axis=1) - lam * served[:, i] / served[st.arms.dense, i]
        arm = int(np.argmax(reward))
        r.record(served[arm, i], st.nll[arm, i], st.agree[arm, i], arm)
    return r


def replay_controller(st: StreamTable, settings: ControllerSettings, label: str, save_to: Path | None = None) -> Replay:
    """Run a controller over the stream in order: training half fully audited, then the evaluation half. The
    final state is saved to `save_to` when given (`serve --adaptive --controller-state` starts from it)."""
    controller = load_controller(None, st.arms, settings)
    if settings.policy == "threshold":
        train = slice(0, st.train)
        costs = np.stack([st.predicted_relative(i) for i in range(st.train)])
        controller.threshold = fit_threshold(st.features[train], -st.nll[:, train].mean(axis=2).T, costs,
                                             st.arms.probe, st.arms.dense, settings.lam)
    r = Replay(label, settings.lam)
    dense, probe = st.arms.dense, st.arms.probe
    for i in range(st.n):
        evaluating = i >= st.train
        x = st.features[i]
        predicted = st.predicted_relative(i)
        arm, decision_us = timed_decision(controller, x, predicted)
        # what serving this input costs: the probe (prefill + features), then the chosen variant (its prefill is
        # the probe's when it is the probe variant)
        cost = st.prefill[probe, i] + st.feature_us[i] / 1000 + decision_us / 1000
        cost += st.decode[arm, i] + (0.0 if arm == probe else st.prefill[arm, i])
        nll, agree, entropy = st.nll[arm, i], st.agree[arm, i], st.entropy[arm, i]
        seen = st.new_tokens  # positions the chosen arm itself produced
        if settings.escalation and arm != dense and controller.entropy_threshold is not None:
            over = np.flatnonzero(entropy > controller.entropy_threshold)
            if over.size:
                t = int(over[0])
                seen = t + 1  # the arm produced position t's logits, dense redoes t onwards
                steps_after = st.new_tokens - 1 - t
                per_step = st.decode[arm, i] / max(st.new_tokens - 1, 1)
                dense_step = st.decode[dense, i] / max(st.new_tokens - 1, 1)
                cost += -per_step * steps_after + st.dense_prefill_ms(int(st.lengths[i]) + t) + dense_step * steps_after
                nll = np.concatenate([nll[:t], st.nll[dense, i, t:]])
                agree = np.concatenate([agree[:t], np.ones(st.new_tokens - t, dtype=bool)])
                if evaluating:
                    r.escalations += 1
        # what the choice itself cost (the probe is spent either way): the quantity `predicted` estimates
        chosen_ms = cost - st.prefill[probe, i] - st.feature_us[i] / 1000 - decision_us / 1000
        audited = arm != dense and (not evaluating or controller.should_audit())  # dense is its own reference
        if audited:
            controller.audits += 1
            # the audit: dense teacher-forced over prompt + continuation in one pass
            cost += st.dense_prefill_ms(int(st.lengths[i]) + st.new_tokens)
            controller.observe_quality(arm, x, -float(nll.mean()), -float(st.nll[dense, i].mean()))
            controller.observe_tokens(entropy[:seen], st.agree[arm, i, :seen])
        dense_predicted = st.cost_models[dense].request(int(st.lengths[i]), st.new_tokens)
        controller.observe_cost(arm, chosen_ms / dense_predicted, float(predicted[arm]))
        if evaluating:
            r.record(cost, nll, agree, arm, decision_us)
            r.audits += int(audited)
    r.final_lam, r.threshold, r.entropy_threshold = controller.lam, controller.threshold or None, \
        controller.entropy_threshold
    if save_to is not None:
        controller.save(save_to)
    return r


# -- the frontier ------------------------------------------------------------------------------------------------
def lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lower-left convex frontier of (cost, nll) points: what mixing static variants can reach (monotone
    chain, keeping only the part where more cost buys lower NLL)."""
    hull: list[tuple[float, float]] = []
    for p in sorted(set(points)):
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
            hull.pop()
        hull.append(p)
    best = min(range(len(hull)), key=lambda k: (hull[k][1], hull[k][0]))
    return hull[:best + 1]


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def frontier_nll(hull: list[tuple[float, float]], cost: float) -> float:
    """The lowest NLL a static mixture reaches at mean cost `cost`; below the cheapest static variant, that
    variant's NLL (a policy cheaper than every static one beats the frontier only by also being better than it)."""
    if cost < hull[0][0]:
        return hull[0][1]
    for (c0, n0), (c1, n1) in zip(hull, hull[1:]):
        if c0 <= cost <= c1:
            return n0 + (n1 - n0) * (cost - c0) / (c1 - c0)
    return hull[-1][1]


# -- the benchmark -----------------------------------------------------------------------------------------------
def gpu_time_factors(gpu_report: dict, variants: list[dict], prompt_tokens: float) -> dict[str, dict]:
    """Per variant: the factors its prefill and decode times are multiplied by on the modelled GPU, i.e. the
    measured 2:4 / dense time of one SmolLM2 decoder block's Linears (bench gpu's block-weighted GEMMs) in the
    variant's precision, at the measured token count nearest the stream's median prompt (prefill) and at M = 1
    (decode). Dense variants keep 1.0; a precision with no measured 2:4 kernel (INT4) keeps 1.0 and says so."""
    speedups = gpu_report.get("summary", {}).get("block_speedups") or block_speedups(gpu_report.get("records", []))
    measured: dict[str, dict[int, float]] = {}
    for key, value in speedups.items():
        model, dtype, tokens = key.split("|")
        if model == "smollm2-135m":
            measured.setdefault(dtype, {})[int(tokens)] = value
    factors = {}
    for v in variants:
        dtype = GPU_DTYPE_OF.get(v["precision"])
        if v["pattern"] == "dense":
            factors[v["name"]] = {"prefill": 1.0, "decode": 1.0, "source": "dense: unchanged", "modelled": False}
        elif v["pattern"] != "2:4" or dtype not in measured:
            why = ("a smaller dense model (structured): its GPU speed-up is not measured, so not modelled"
                   if v.get("structured") else
                   "partly 2:4 (hardware schedule): not modelled" if v["pattern"] != "2:4" else
                   f"no {v['precision']} 2:4 kernel measured (INT4 + 2:4 is not accelerated, TensorRT-LLM #1731)"
                   if v["precision"] == "int4" else f"no {dtype} GEMM in the GPU report")
            factors[v["name"]] = {"prefill": 1.0, "decode": 1.0, "source": f"{why}: unchanged", "modelled": False}
        else:
            cells = measured[dtype]
            prefill_m = min(cells, key=lambda m: abs(np.log(m) - np.log(max(prompt_tokens, 1))))
            decode_m = min(cells)
            factors[v["name"]] = {"prefill": 1 / cells[prefill_m], "decode": 1 / cells[decode_m],
                                  "source": f"{dtype} block GEMMs: 2:4/dense at M={prefill_m} (prefill), "
                                            f"M={decode_m} (decode)", "modelled": True}
    return factors


def scaled_for_gpu(table: dict, manifest: dict, factors: dict[str, dict]) -> tuple[dict, dict]:
    """The measured table and variant set with every variant's prefill and decode times (and cost models)
    multiplied by its factors: the same stream, priced as the GPU ratios say."""
    scaled = {**table, "variants": {}}
    for name, rows in table["variants"].items():
        f = factors.get(name, {"prefill": 1.0, "decode": 1.0})
        scaled["variants"][name] = {**rows, "prefill_ms": rows["prefill_ms"] * f["prefill"],
                                    "decode_ms": rows["decode_ms"] * f["decode"]}
    variants = []
    for v in manifest["variants"]:
        f, cost = factors.get(v["name"], {"prefill": 1.0, "decode": 1.0}), dict(v["cost"])
        cost["prefill_intercept_ms"] *= f["prefill"]
        cost["prefill_per_token_ms"] *= f["prefill"]
        cost["decode_ms"] *= f["decode"]
        variants.append({**v, "cost": cost})
    return scaled, {**manifest, "variants": variants}


def policy_report(st: StreamTable, settings: AdaptiveBenchSettings, cost_unit: str, states: Path | None) -> dict:
    """Every policy replayed over `st`, with relative costs, the static frontier and the acceptance checks."""
    results = replay_all(st, settings, states=states)
    rows = [r.row(st.names, cost_unit) for r in results["main"]]
    sweep = [r.row(st.names, cost_unit) for r in results["sweep"]]
    statics = [row for row in rows if row["policy"].startswith("static:")]
    hull = lower_hull([(row["mean_cost"], row["nll"]) for row in statics])
    dense_row = next(row for row in statics if row["policy"] == f"static:{st.names[st.arms.dense]}")
    for row in rows + sweep:
        row["relative_cost"] = row["mean_cost"] / dense_row["mean_cost"]
        row["frontier_nll"] = frontier_nll(hull, row["mean_cost"])
        row["beats_static_frontier"] = bool(row["nll"] < row["frontier_nll"])
    prefill_probe = float(np.median(st.prefill[st.arms.probe, st.train:]))
    return {"policies": rows, "sweep": sweep, "frontier": hull, "lam": results["lam"],
            "acceptance": acceptance_checks(rows, sweep, dense_row, prefill_probe),
            "probe_prefill_ms_median": prefill_probe}


def read_gpu_report(path: Path) -> dict:
    """A gpu.json written by `sparsetrt bench gpu`, or a SparsetrtError saying what it is not."""
    report = read_json(path)
    if not isinstance(report, dict) or not str(report.get("format", "")).startswith("sparsetrt.bench-gpu/"):
        raise SparsetrtError(f"{path} is not a `sparsetrt bench gpu` report (gpu.json); run `make bench-gpu` on a "
                             "CUDA GPU and pass its gpu.json")
    return report


def modelled_gpu(table: dict, meta: dict, manifest: dict, names: list[str], settings: AdaptiveBenchSettings,
                 gpu_report: dict, gpu_cost: Path) -> dict:
    """The policies replayed on GPU-modelled costs (see gpu_time_factors): a model, labelled so everywhere."""
    factors = gpu_time_factors(gpu_report, [v for v in manifest["variants"] if v["name"] in names],
                               float(np.median(meta["prompt_lengths"])))
    if not any(f["modelled"] for f in factors.values()):
        raise SparsetrtError(f"{gpu_cost} holds no SmolLM2 GEMM speedup for any 2:4 variant of the set; nothing to "
                             "model")
    scaled_table, scaled_manifest = scaled_for_gpu(table, manifest, factors)
    st = StreamTable(scaled_table, meta, scaled_manifest, names)
    device = gpu_report.get("device", {})
    unit = f"ms per request (modelled: measured CPU time x GPU 2:4/dense ratio of {device.get('name', 'a GPU')})"
    return {"note": (f"modelled, not measured: each 2:4 variant's measured time scaled by the dense / 2:4 GEMM "
                     f"ratios measured on {device.get('name', '?')} (SM "
                     f"{''.join(map(str, device.get('compute_capability', [])))}) by `sparsetrt bench gpu`; only "
                     "the Linears speed up on a GPU, so the whole-request scaling is an upper bound on the gain"),
            "source": str(gpu_cost), "device": device.get("name"), "factors": factors,
            **policy_report(st, settings, unit, states=None)}


def run_adaptive_bench(variant_set: Path, out: Path, work: Path, settings: AdaptiveBenchSettings | None = None,
                       reuse_table: bool = True, progress: bool = True, gpu_cost: Path | None = None) -> dict:
    settings = settings or AdaptiveBenchSettings()
    gpu_report = read_gpu_report(gpu_cost) if gpu_cost else None  # a bad file fails before the long measurement
    manifest = read_variant_set(variant_set)
    all_names = [v["name"] for v in manifest["variants"]]
    names = list(settings.variants) or all_names
    unknown = [n for n in names if n not in all_names]
    if unknown:
        raise SparsetrtError(f"variants {unknown} are not in the variant set ({', '.join(all_names)})")
    for required in (manifest["dense"], manifest["probe"]):
        if required not in names:
            names.append(required)
    work, out = Path(work), Path(out)
    work.mkdir(parents=True, exist_ok=True)
    table_path = work / "table.npz"
    key = {"settings": {k: v for k, v in settings.model_dump().items()
                        if k in ("inputs_per_source", "new_tokens", "min_prompt_tokens", "max_prompt_tokens", "seed")},
           "variants": {n: next(v["path"] for v in manifest["variants"] if v["name"] == n) for n in names}}
    table, meta = None, None
    if reuse_table and table_path.is_file():
        table, meta = load_table(table_path)
        if meta.get("key") != json.loads(json.dumps(key)):
            table = None
    if table is None:
        tokenizer = load_tokenizer(Path(manifest["tokenizer"]))
        inputs, described = build_stream(tokenizer, settings)
        if progress:
            print(f"==> {len(inputs)} inputs x {len(names)} variants, teacher-forced on {manifest['backend']}",
                  flush=True)
        table = measure_table(manifest, inputs, names, progress)
        meta = {"key": key, "sources": described, "source_of": [x["source"] for x in inputs],
                "prompt_lengths": [len(x["prompt"]) for x in inputs], "train_fraction": settings.train_fraction}
        save_table(table, table_path, meta)
    meta["train_fraction"] = settings.train_fraction
    st = StreamTable(table, meta, manifest, names)
    machine = manifest.get("machine", {})
    cost_unit = f"ms per request (measured, {manifest['backend']} on {machine.get('cpu', 'this machine')})"
    measured = policy_report(st, settings, cost_unit, states=work)
    gpu = modelled_gpu(table, meta, manifest, names, settings, gpu_report, gpu_cost) if gpu_report else None
    modelled = {} if gpu is None else {row["policy"]: row["relative_cost"] for row in gpu["policies"]}
    for row in measured["policies"]:
        row["modelled_gpu_cost"] = modelled.get(row["policy"])
    report = {"policies": measured["policies"], "sweep": measured["sweep"], "acceptance": measured["acceptance"],
              "frontier": measured["frontier"], "lam": measured["lam"],
              "modelled_gpu_cost_note": GPU_COST_NOTE if gpu is None else gpu["note"], "modelled_gpu": gpu,
              "settings": settings.model_dump(), "variants": manifest["variants"],
              "dense": manifest["dense"], "probe": manifest["probe"], "machine": machine,
              "stream": {"inputs": st.n, "train": st.train, "evaluate": st.n - st.train, "sources": meta["sources"],
                         "per_source": {s: meta["source_of"].count(s) for s in meta["sources"]},
                         "new_tokens": st.new_tokens},
              "probe_prefill_ms_median": measured["probe_prefill_ms_median"],
              "feature_us_mean": float(np.mean(st.feature_us)),
              "per_source": per_source_table(st, meta)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "adaptive.json", report)

    write_adaptive_report(out, report)
    return report


def summary_lines(report: dict, out: Path) -> list[str]:
    """What `sparsetrt bench adaptive` prints: each policy, the acceptance checks, the files."""
    lines = [f"{row['policy']:<26} cost {row['relative_cost']:.3f}x dense  NLL {row['nll']:.3f}  agreement "
             f"{row['agreement_with_dense']:.3f}  decision {row['decision_overhead_us']:.0f} us"
             for row in report["policies"]]
    acc = report["acceptance"]
    lines.append(f"acceptance: frontier {acc['frontier']['passed']}, 95 % agreement at <= 60 % cost "
                 f"{acc['agreement_at_cost']['passed']}, overhead {acc['overhead']['passed']}")
    best = acc["agreement_at_cost"]["best_bandit_within_cost"]
    if best:
        lines.append(f"best bandit at <= 60 % cost: {best['policy']} agreement {best['agreement_with_dense']:.3f} at "
                     f"{best['relative_cost']:.3f}x dense")
    lines.append(f"wrote {Path(out) / 'adaptive.json'}, adaptive.md, adaptive.png")
    return lines


def replay_all(st: StreamTable, settings: AdaptiveBenchSettings, states: Path | None = None) -> dict:
    """Every policy over the stream; the main controllers' final states go to `states`/controller-<label>.json."""
    lam = st.frontier_slope() if settings.lam is None else settings.lam
    base = ControllerSettings(lam=lam, audit_fraction=settings.audit_fraction, seed=settings.seed)
    main = [replay_static(st, arm) for arm in range(len(st.names))]
    for label, policy, escalation in (("threshold", "threshold", False), ("linucb", "linucb", False),
                                      ("thompson", "thompson", False), ("linucb+escalation", "linucb", True)):
        save_to = None if states is None else Path(states) / f"controller-{label}.json"
        main.append(replay_controller(st, base.model_copy(update=dict(policy=policy, escalation=escalation)), label, save_to))
    main.append(replay_oracle(st, lam))
    sweep = []
    for price in settings.lams:
        for policy in ("linucb", "thompson"):
            sweep.append(replay_controller(st, base.model_copy(update=dict(policy=policy, lam=price)), f"{policy}@{price:g}"))
        oracle = replay_oracle(st, price)
        oracle.policy = f"oracle@{price:g}"
        sweep.append(oracle)
    return {"main": main, "sweep": sweep, "lam": lam}


AGREEMENT_COST_LIMIT = 0.6  # adaptive routing pays only if it keeps dense's answers at <= 60 % of dense's cost


def acceptance_checks(rows: list[dict], sweep: list[dict], dense_row: dict, prefill_probe_ms: float) -> dict:
    """The three bars adaptive routing must clear to be worth deploying (beat the static frontier, dense's answers
    at a fraction of its cost, a decision far cheaper than a token), computed from this run (never assumed)."""
    bandits = [r for r in rows + sweep if r["policy"].split("@")[0].split("+")[0] in ("linucb", "thompson")]
    main = [r for r in rows if r["policy"] in ("linucb", "thompson")]
    reach = [r for r in bandits if r["agreement_with_dense"] >= 0.95 * dense_row["agreement_with_dense"]]
    cheapest_reach = min(reach, key=lambda r: r["relative_cost"]) if reach else None
    overhead = max(r["decision_overhead_us"] for r in bandits)
    within = [r for r in rows + sweep if r["relative_cost"] <= AGREEMENT_COST_LIMIT]

    def best(candidates):
        top = max(candidates, key=lambda r: r["agreement_with_dense"], default=None)
        return None if top is None else {k: top[k] for k in ("policy", "relative_cost", "agreement_with_dense", "nll")}
    return {
        "frontier": {"passed": all(r["beats_static_frontier"] for r in main),
                     "rows": {r["policy"]: {"nll": r["nll"], "frontier_nll": r["frontier_nll"],
                                            "relative_cost": r["relative_cost"]} for r in main}},
        "agreement_at_cost": {
            "passed": bool(cheapest_reach and cheapest_reach["relative_cost"] <= AGREEMENT_COST_LIMIT),
            "best_bandit_within_cost": best(r for r in within if r in bandits),
            "best_static_within_cost": best(r for r in within if r["policy"].startswith("static:")),
            "target": ">= 95 % of dense agreement at <= 60 % of dense cost",
            "cheapest_bandit_reaching_95": None if cheapest_reach is None else {
                "policy": cheapest_reach["policy"], "relative_cost": cheapest_reach["relative_cost"],
                "agreement_with_dense": cheapest_reach["agreement_with_dense"]}},
        "overhead": {"passed": overhead <= 0.02 * prefill_probe_ms * 1000, "max_decision_overhead_us": overhead,
                     "cheapest_prefill_ms_median": prefill_probe_ms, "limit_us": 0.02 * prefill_probe_ms * 1000},
    }


def per_source_table(st: StreamTable, meta: dict) -> dict:
    """Mean NLL and agreement of each static variant per source (evaluation half): where difficulty differs."""
    sources = np.asarray(meta["source_of"])
    result = {}
    for source in meta["sources"]:
        idx = np.flatnonzero(sources == source)
        idx = idx[idx >= st.train]
        result[source] = {name: {"nll": float(st.nll[a, idx].mean()), "agreement": float(st.agree[a, idx].mean())}
                          for a, name in enumerate(st.names)} if idx.size else {}
    return result
