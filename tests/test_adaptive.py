"""Adaptive sparsity: probe signals, bandit controllers and their state, the offline replay, the variant set and
`serve --adaptive`, on synthetic problems and a tiny random-weight model (seconds)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import settings_refusal

from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.errors import SparsetrtError
from sparsetrt.runtime.adaptive.controllers import (
    Arms,
    Controller,
    ControllerSettings,
    fit_entropy_threshold,
    fit_threshold,
    load_controller,
)
from sparsetrt.runtime.adaptive.features import FEATURES, probe_features, token_stats
from sparsetrt.runtime.bench.adaptive import (
    AdaptiveBenchSettings,
    StreamTable,
    frontier_nll,
    lower_hull,
    replay_all,
    replay_controller,
    replay_oracle,
    replay_static,
    run_adaptive_bench,
)

ARMS = Arms(["cheap", "dense"], dense=1, probe=0)
COSTS = np.array([0.5, 1.0])


# -- signals -----------------------------------------------------------------------------------------------------
def test_probe_features_of_uniform_and_certain_logits():
    vocab, ids = 8, np.array([3, 1, 4, 1, 5])
    uniform = probe_features(np.zeros((5, vocab)), ids)
    assert uniform[FEATURES.index("mean_nll")] == pytest.approx(np.log(vocab) / 10, rel=1e-5)
    assert uniform[FEATURES.index("last_entropy")] == pytest.approx(np.log(vocab) / 10, rel=1e-5)
    certain = np.full((5, vocab), -30.0)
    certain[np.arange(4), ids[1:]] = 30.0  # every next token predicted with certainty
    feats = probe_features(certain, ids)
    assert feats[FEATURES.index("mean_nll")] < 1e-6 and feats[FEATURES.index("mean_entropy")] < 1e-6
    assert feats[FEATURES.index("log_length")] == pytest.approx(np.log2(5) / 11)
    assert probe_features(np.zeros((1, vocab)), ids[:1]).shape == (len(FEATURES),)  # a one-token prompt works
    with pytest.raises(ValueError, match="cover 4 positions"):
        probe_features(np.zeros((4, vocab)), ids)


def test_token_stats_nll_matches_log_softmax():
    logits = np.random.default_rng(0).normal(size=(3, 11))
    stats = token_stats(logits, np.array([0, 5, 10]))
    ref = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert stats["nll"] == pytest.approx(-ref[[0, 1, 2], [0, 5, 10]], rel=1e-5)
    assert list(stats["argmax"]) == list(logits.argmax(axis=1))


# -- controllers on a synthetic contextual problem --------------------------------------------------------------
def synthetic(n: int, seed: int):
    """x[1] is the input's difficulty: the cheap arm loses 3 * difficulty nats, dense none; dense costs 1, cheap 0.5."""
    rng = np.random.default_rng(seed)
    xs = np.zeros((n, len(FEATURES)))
    xs[:, 0] = 1.0
    xs[:, 1] = rng.uniform(0, 1, n)
    xs[:, 2:] = rng.normal(0, 0.05, (n, len(FEATURES) - 2))
    quality = np.stack([-1 - 3 * xs[:, 1], np.full(n, -1.0)], axis=1) + rng.normal(0, 0.05, (n, 2))
    return xs, quality


def train(controller: Controller, xs, quality):
    for x, q in zip(xs, quality):
        arm = controller.decide(x, COSTS)
        controller.observe_quality(arm, x, q[arm], q[ARMS.dense])
        controller.observe_cost(arm, COSTS[arm], COSTS[arm])
    return controller


@pytest.mark.parametrize("policy", ["linucb", "thompson"])
def test_bandit_learns_which_inputs_need_the_dense_arm(policy):
    # reward = quality - 1.0 * cost: cheap wins while 3 * difficulty < 0.5, i.e. difficulty < 1/6
    controller = train(Controller(ARMS, ControllerSettings(policy=policy, lam=1.0, seed=1)), *synthetic(400, 0))
    xs, _ = synthetic(200, 99)
    chosen = np.array([controller.decide(x, COSTS) for x in xs])
    reward = np.stack([-1 - 3 * xs[:, 1] - 0.5, np.full(len(xs), -2.0)], axis=1)  # expected quality - cost
    regret = reward.max(axis=1) - reward[np.arange(len(xs)), chosen]
    assert (chosen == reward.argmax(axis=1)).mean() > 0.85
    assert regret.mean() < 0.03  # mistakes only near the boundary, where they cost little
    always_dense = reward.max(axis=1) - reward[:, 1]
    assert regret.mean() < 0.2 * always_dense.mean()


def test_thompson_is_reproducible_from_the_seed():
    xs, quality = synthetic(60, 0)

    def decisions(seed):
        c = Controller(ARMS, ControllerSettings(policy="thompson", seed=seed))
        out = []
        for x, q in zip(xs, quality):
            arm = c.decide(x, COSTS)
            c.observe_quality(arm, x, q[arm], q[ARMS.dense])
            out.append(arm)
        return out

    assert decisions(3) == decisions(3)
    assert decisions(3) != decisions(4)


def test_state_survives_a_restart(tmp_path):
    settings = ControllerSettings(policy="thompson", seed=5, escalation=True)
    xs, quality = synthetic(120, 0)
    first = train(Controller(ARMS, settings), xs[:100], quality[:100])
    first.observe_tokens([3.0] * 30 + [0.1] * 30, [False] * 30 + [True] * 30)
    path = tmp_path / "state" / "controller.json"
    first.save(path)
    second = load_controller(path, ARMS, settings)
    assert second.audits == first.audits and second.entropy_threshold == first.entropy_threshold
    assert np.allclose(second.covariance, first.covariance) and second.decisions.tolist() == first.decisions.tolist()
    # the restarted controller decides exactly as the one that kept running (same posterior, same RNG stream)
    assert [first.decide(x, COSTS) for x in xs[100:]] == [second.decide(x, COSTS) for x in xs[100:]]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"version": 1, "arms": ["a", "b"]}), "",
                                     "\xff\xfe"])
def test_a_corrupt_state_file_is_reported_and_replaced(tmp_path, caplog, content):
    path = tmp_path / "controller.json"
    path.write_text(content, encoding="latin-1")
    with caplog.at_level(logging.WARNING, logger="sparsetrt.adaptive"):
        controller = load_controller(path, ARMS, ControllerSettings(seed=2))
    assert controller.audits == 0 and controller.decisions.sum() == 0  # fresh
    assert "starting a fresh controller" in caplog.text and str(path) in caplog.text
    assert not path.exists() and (tmp_path / "controller.json.corrupt").read_text(encoding="latin-1") == content
    controller.save(path)
    assert load_controller(path, ARMS, ControllerSettings(seed=2)).audits == 0  # the fresh one saves and reloads


def test_state_of_other_variants_is_not_used(tmp_path, caplog):
    path = tmp_path / "controller.json"
    Controller(Arms(["a", "b", "c"], 2, 0), ControllerSettings()).save(path)
    with caplog.at_level(logging.WARNING, logger="sparsetrt.adaptive"):
        controller = load_controller(path, ARMS, ControllerSettings())
    assert controller.arms.names == ARMS.names and "not ['cheap', 'dense']" in caplog.text


def test_budget_moves_the_price_of_cost():
    controller = Controller(ARMS, ControllerSettings(lam=0.5, budget=0.6, eta=0.5))
    controller.observe_cost(1, 1.0, 1.0)  # spent 1.0 against a budget of 0.6
    assert controller.lam == pytest.approx(0.7)
    for _ in range(20):
        controller.observe_cost(0, 0.5, 0.5)
    assert controller.lam == 0.0  # floored
    assert controller.cost_ratio[0] == pytest.approx(1.0)
    controller.observe_cost(0, 1.6, 0.5)  # slower than the model said: the correction follows
    assert controller.cost_ratio[0] > 1.0


def test_settings_are_checked():
    assert "must be one of 'linucb'" in settings_refusal(ControllerSettings, policy="greedy")
    with pytest.raises(SparsetrtError, match="policy static needs one of the variants"):
        ControllerSettings(policy="static", static_arm="nope").check_arms(ARMS.names)
    assert settings_refusal(ControllerSettings, budget=0) == "--budget must be > 0, not 0"
    with pytest.raises(SparsetrtError, match="has not been fitted"):
        Controller(ARMS, ControllerSettings(policy="threshold")).decide(np.ones(len(FEATURES)), COSTS)
    assert Controller(ARMS, ControllerSettings(policy="static", static_arm="dense")).decide(
        np.ones(len(FEATURES)), COSTS) == 1


def test_entropy_threshold_separates_unsure_tokens():
    rng = np.random.default_rng(0)
    entropy = rng.uniform(0, 4, 2000)
    agreed = np.where(entropy > 2.5, rng.random(2000) < 0.2, rng.random(2000) < 0.95)
    threshold = fit_entropy_threshold(list(zip(entropy, agreed)))
    assert 2.2 < threshold < 2.8
    assert fit_entropy_threshold([[5.0, True]] * 100) is None  # never wrong: never escalate
    assert fit_entropy_threshold([[5.0, False]] * 5) is None   # too few tokens to tell


def test_threshold_fit_sends_hard_inputs_to_dense():
    xs, quality = synthetic(300, 0)
    costs = np.tile(COSTS, (300, 1))
    fitted = fit_threshold(xs, quality, costs, cheap=0, dense=1, lam=1.0, feature=1)
    assert fitted["value"] == pytest.approx(1 / 6, abs=0.05)
    controller = Controller(ARMS, ControllerSettings(policy="threshold"), threshold=fitted)
    assert controller.decide(xs[np.argmin(xs[:, 1])], COSTS) == 0 and controller.decide(xs[np.argmax(xs[:, 1])], COSTS) == 1


# -- the frontier and the replay --------------------------------------------------------------------------------
def test_lower_hull_and_frontier():
    points = [(1.0, 2.0), (0.5, 3.0), (0.75, 2.9), (0.9, 2.1), (1.2, 2.05)]  # (0.75, 2.9) lies above the hull
    hull = lower_hull(points)
    assert hull == [(0.5, 3.0), (0.9, 2.1), (1.0, 2.0)]  # the costlier, worse (1.2, 2.05) is not frontier
    assert frontier_nll(hull, 0.7) == pytest.approx(2.55)
    assert frontier_nll(hull, 0.4) == 3.0 and frontier_nll(hull, 5.0) == 2.0


def synthetic_table(n: int = 200, tokens: int = 4, seed: int = 0):
    """A measured-table stand-in: arm 0 (cheap, the probe) is as good as dense on easy inputs and 2 nats worse on
    hard ones; the probe's mean-NLL feature says which is which."""
    rng = np.random.default_rng(seed)
    hard = rng.random(n) < 0.4
    features = np.zeros((n, len(FEATURES)))
    features[:, 0] = 1
    features[:, 1] = np.where(hard, 0.6, 0.2) + rng.normal(0, 0.03, n)
    dense_nll = rng.uniform(1.5, 2.5, (n, tokens))
    cheap_nll = dense_nll + np.where(hard, 2.0, 0.02)[:, None]
    dense_arg = rng.integers(0, 50, (n, tokens))
    cheap_arg = np.where(hard[:, None] & (rng.random((n, tokens)) < 0.7), dense_arg + 1, dense_arg)
    entropy = np.where(cheap_arg != dense_arg, 4.0, 0.5)

    def variant(prefill, step, nll, argmax, ent):
        return {"prefill_ms": np.full(n, prefill), "decode_ms": np.full(n, step * (tokens - 1)), "nll": nll,
                "argmax": argmax, "entropy": ent}

    table = {"variants": {"cheap": variant(50.0, 5.0, cheap_nll, cheap_arg, entropy),
                          "dense": variant(100.0, 10.0, dense_nll, dense_arg, np.full((n, tokens), 1.0))},
             "features": features, "feature_us": np.full(n, 100.0)}
    manifest = {"dense": "dense", "probe": "cheap", "variants": [
        {"name": "cheap", "cost": {"prefill_intercept_ms": 50.0, "prefill_per_token_ms": 0.0, "decode_ms": 5.0}},
        {"name": "dense", "cost": {"prefill_intercept_ms": 100.0, "prefill_per_token_ms": 0.0, "decode_ms": 10.0}}]}
    meta = {"prompt_lengths": [32] * n, "train_fraction": 0.5}
    return StreamTable(table, meta, manifest, ["cheap", "dense"])


def test_replay_charges_what_serving_would_spend():
    st = synthetic_table()
    static_cheap, static_dense = replay_static(st, 0), replay_static(st, 1)
    assert np.mean(static_cheap.cost_ms) == pytest.approx(65.0) and np.mean(static_dense.cost_ms) == pytest.approx(130)
    always_cheap = replay_controller(st, ControllerSettings(policy="static", static_arm="cheap", audit_fraction=0),
                                     "c")
    # the probe's prefill is the cheap arm's: reused, so only the features and the decision are added
    assert np.mean(always_cheap.cost_ms) == pytest.approx(65.0 + 0.1, abs=0.05)
    always_dense = replay_controller(st, ControllerSettings(policy="static", static_arm="dense", audit_fraction=0),
                                     "d")
    assert np.mean(always_dense.cost_ms) == pytest.approx(130.0 + 50.0 + 0.1, abs=0.05)  # probe wasted
    audited = replay_controller(st, ControllerSettings(policy="static", static_arm="cheap", audit_fraction=1), "a")
    assert np.mean(audited.cost_ms) == pytest.approx(65.1 + 100.0, abs=0.05)  # + dense's one-pass audit
    assert audited.audits == len(audited.cost_ms)


def test_escalation_hands_unsure_tokens_to_dense():
    st = synthetic_table()
    cheap = ControllerSettings(policy="static", static_arm="cheap", audit_fraction=1.0)
    plain = replay_controller(st, cheap, "cheap")
    escalating = replay_controller(st, cheap.model_copy(update=dict(escalation=True)), "cheap+escalation")
    assert 0.5 < escalating.entropy_threshold < 4.0  # between the sure (0.5) and the unsure (4.0) tokens
    assert escalating.escalations > 0.3 * len(escalating.nll)  # the hard inputs (40 %)
    assert np.mean(escalating.nll) < np.mean(plain.nll) - 0.5
    assert np.mean(escalating.agreement) > np.mean(plain.agreement) + 0.1
    assert np.mean(escalating.cost_ms) > np.mean(plain.cost_ms)  # the dense prefill and steps are paid for


def test_bandit_beats_the_static_frontier_when_difficulty_is_visible(tmp_path):
    st = synthetic_table()
    results = replay_all(st, AdaptiveBenchSettings(lam=0.5, lams=(0.5,), audit_fraction=0.05), states=tmp_path)
    rows = {r.policy: r for r in results["main"]}
    hull = lower_hull([(np.mean(rows[p].cost_ms), np.mean(rows[p].nll)) for p in ("static:cheap", "static:dense")])
    for policy in ("linucb", "thompson", "threshold", "linucb+escalation"):
        cost, nll = np.mean(rows[policy].cost_ms), np.mean(rows[policy].nll)
        assert nll < frontier_nll(hull, cost) - 0.1, policy
    oracle = replay_oracle(st, 0.5)
    assert np.mean(oracle.nll) <= np.mean(rows["linucb"].nll) + 1e-9
    assert (tmp_path / "controller-linucb.json").is_file() and (tmp_path / "controller-threshold.json").is_file()
    again = replay_all(st, AdaptiveBenchSettings(lam=0.5, lams=(0.5,), audit_fraction=0.05))
    for a, b in zip(results["main"], again["main"]):  # reproducible from the seed (decision times aside)
        assert (a.policy, a.choices, a.nll, a.audits) == (b.policy, b.choices, b.nll, b.audits)


# -- the variant set, the benchmark and serving on a tiny model --------------------------------------------------
@pytest.fixture(scope="module")
def tiny_variants(pruned_tiny, exported_tiny, tmp_path_factory):
    from sparsetrt.runtime.adaptive.variant_set import build_variant_set

    root = tmp_path_factory.mktemp("adaptive")
    artifacts = root / "artifacts"
    shutil.copytree(pruned_tiny, artifacts / "pruned")
    shutil.copytree(exported_tiny[0], artifacts / "onnx")
    manifest = build_variant_set(artifacts, root / "variants", dense=True, progress=False)
    return root, manifest


def test_variant_set_manifest(tiny_variants):
    root, manifest = tiny_variants
    names = [v["name"] for v in manifest["variants"]]
    assert set(names) == {"dense-fp32", "2:4-fp32"} and manifest["dense"] == "dense-fp32"
    assert json.loads((root / "variants" / "variants.json").read_text()) == json.loads(json.dumps(manifest))
    for v in manifest["variants"]:
        assert v["file_bytes"] > 0 and v["cost"]["decode_ms"] > 0 and set(v["cost"]["prefill_ms"]) == {"32", "128",
                                                                                                       "256"}
        assert v["pattern"] in ("dense", "2:4") and v["precision"] == "fp32"
        assert v["quality_nll"] > 0
    from sparsetrt.runtime.adaptive.variant_set import choose_probe

    assert manifest["probe"] == choose_probe(manifest["variants"])["name"]


def test_probe_is_the_cheapest_with_noise_ties_to_the_better_variant():
    from sparsetrt.runtime.adaptive.variant_set import choose_probe

    def entry(name, ms, nll):
        return {"name": name, "cost": {"reference_request_ms": ms}, "quality_nll": nll}

    entries = [entry("dense-fp32", 1000, 3.0), entry("2:4-int8", 600, 4.4), entry("dense-int8", 640, 3.1),
               entry("dense-int4", 900, 3.2)]
    assert choose_probe(entries)["name"] == "dense-int8"  # 640 is within 10 % of 600 and much better
    entries[2]["cost"]["reference_request_ms"] = 700
    assert choose_probe(entries)["name"] == "2:4-int8"  # no longer a tie: the cheapest wins


def test_variant_set_refuses_a_missing_pipeline_run(tmp_path):
    from sparsetrt.runtime.adaptive.variant_set import build_variant_set, read_variant_set

    with pytest.raises(SparsetrtError, match="does not exist"):
        build_variant_set(tmp_path / "nothing", tmp_path / "v", progress=False)
    with pytest.raises(SparsetrtError, match="build the variant set first"):
        read_variant_set(tmp_path / "v")


def test_bench_adaptive_writes_the_contract(tiny_variants):
    root, _ = tiny_variants
    settings = AdaptiveBenchSettings(inputs_per_source=4, new_tokens=3, min_prompt_tokens=6, max_prompt_tokens=12,
                                     lams=(0.1, 1.0))
    report = run_adaptive_bench(root / "variants", root / "out", root / "work", settings, progress=False)
    saved = json.loads((root / "out" / "adaptive.json").read_text())
    assert saved["policies"] == json.loads(json.dumps(report["policies"]))
    policies = [r["policy"] for r in saved["policies"]]
    assert {"static:dense-fp32", "static:2:4-fp32", "threshold", "linucb", "thompson", "linucb+escalation",
            "oracle"} <= set(policies)
    for row in saved["policies"]:
        for key in ("policy", "mean_cost", "cost_unit", "nll", "agreement_with_dense", "decision_overhead_us"):
            assert key in row
        assert row["mean_cost"] > 0 and row["nll"] > 0 and 0 <= row["agreement_with_dense"] <= 1
        assert row["inputs"] == saved["stream"]["evaluate"] == 10
    dense = next(r for r in saved["policies"] if r["policy"] == "static:dense-fp32")
    assert dense["agreement_with_dense"] == 1.0 and dense["relative_cost"] == 1.0
    assert "ms per request (measured" in dense["cost_unit"]
    assert set(saved["acceptance"]) == {"frontier", "agreement_at_cost", "overhead"}
    assert saved["stream"]["per_source"] == {s: 4 for s in ("wikitext-valid", "python-docs", "sparsetrt-source",
                                                            "repetitive", "shuffled")}
    assert (root / "out" / "adaptive.png").stat().st_size > 1000
    assert "Acceptance (computed by this run)" in (root / "out" / "adaptive.md").read_text()
    table = root / "work" / "table.npz"
    stamp = table.stat().st_mtime_ns
    run_adaptive_bench(root / "variants", root / "out", root / "work", settings.model_copy(update=dict(lam=0.5)), progress=False)
    assert table.stat().st_mtime_ns == stamp  # same stream and variants: the measured table is reused


def test_bench_adaptive_models_gpu_costs_beside_the_measured_ones(tiny_variants, tmp_path):
    from test_bench_gpu import synthetic_report

    from sparsetrt.runtime.bench.gpu import summarize

    root, _ = tiny_variants
    gpu_report = synthetic_report()
    for record in gpu_report["records"]:  # the tiny stream's prompts (6-12 tokens) are priced at M = 1: 1.25x there
        if record["kind"] == "gemm" and record["tokens"] == 1 and "speedup" in record:
            record["sparse_ms"], record["speedup"] = record["dense_ms"] / 1.25, 1.25
    gpu_report["summary"] = summarize(gpu_report["records"])
    gpu_json = tmp_path / "gpu.json"
    gpu_json.write_text(json.dumps(gpu_report))
    settings = AdaptiveBenchSettings(inputs_per_source=4, new_tokens=3, min_prompt_tokens=6, max_prompt_tokens=12,
                                     lams=(0.1,))
    report = run_adaptive_bench(root / "variants", tmp_path / "out", root / "work", settings, progress=False,
                                gpu_cost=gpu_json)  # the contract test's table, reused
    gpu = report["modelled_gpu"]
    assert gpu["note"].startswith("modelled, not measured") and "Synthetic GPU" in gpu["note"]
    assert gpu["factors"]["dense-fp32"]["prefill"] == 1.0 and gpu["factors"]["2:4-fp32"]["prefill"] < 1.0
    measured = {r["policy"]: r for r in report["policies"]}
    modelled = {r["policy"]: r for r in gpu["policies"]}
    assert modelled["static:2:4-fp32"]["relative_cost"] < measured["static:2:4-fp32"]["relative_cost"]
    assert modelled["static:dense-fp32"]["relative_cost"] == 1.0 and "modelled" in modelled["linucb"]["cost_unit"]
    assert measured["linucb"]["modelled_gpu_cost"] == modelled["linucb"]["relative_cost"]
    assert "Modelled on GPU costs (a model, not a measurement)" in (tmp_path / "out" / "adaptive.md").read_text()
    gpu_json.write_text("{}")
    with pytest.raises(SparsetrtError, match="not a `sparsetrt bench gpu` report"):
        run_adaptive_bench(root / "variants", tmp_path / "out", root / "work", settings, progress=False,
                           gpu_cost=gpu_json)


def adaptive_served(root, **settings):
    from sparsetrt.runtime.adaptive.router import resolve_adaptive

    return resolve_adaptive(root / "variants", ControllerSettings(**settings), state_path=root / "state.json")


def test_serve_adaptive_routes_requests_and_counts_decisions(tiny_variants):
    from serve_support import LiveServer

    root, manifest = tiny_variants
    (root / "state.json").unlink(missing_ok=True)
    served = adaptive_served(root, policy="linucb", audit_fraction=1.0, escalation=True, seed=0)
    with LiveServer(served) as server:
        for i in range(4):
            r = server.client.post("/v1/completions", json={"prompt": f"def f{i}(x):", "max_tokens": 5})
            assert r.status_code == 200, r.text
        stream = server.client.post("/v1/completions", json={"prompt": "x = ", "max_tokens": 4, "stream": True})
        assert stream.text.rstrip().endswith("data: [DONE]")
        decisions = {name: server.metric("sparsetrt_adaptive_decisions_total", variant=name)
                     for name in [v["name"] for v in manifest["variants"]]}
        health = server.client.get("/health").json()
        # the audit runs after the response is sent: wait for the last one
        expected = sum(v for k, v in decisions.items() if k != "dense-fp32")  # dense is never audited against itself
        deadline = time.monotonic() + 10
        while (audits := server.metric("sparsetrt_adaptive_audits_total")) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sum(decisions.values()) == 5
    assert health["adaptive"]["policy"] == "linucb" and health["precision"] == "adaptive-linucb"
    state = json.loads((root / "state.json").read_text())
    assert sum(state["decisions"]) == 5 and state["audits"] == audits
    assert audits == expected

    # a restart continues from the saved state
    with LiveServer(adaptive_served(root, policy="linucb", audit_fraction=1.0, seed=0)) as server:
        assert server.client.post("/v1/completions", json={"prompt": "y", "max_tokens": 2}).status_code == 200
    assert sum(json.loads((root / "state.json").read_text())["decisions"]) == 6


def test_serve_adaptive_batches_per_variant_and_moves_escalated_rows(tiny_variants):
    """Concurrent requests batched per variant (some escalated mid-generation into dense's batch) produce what each
    gets served alone. The escalation rule is patched to a deterministic function of the token's entropy, so the
    same tokens escalate however requests are batched."""
    import concurrent.futures

    import httpx
    from serve_support import LiveServer

    class Delayed:  # each decode step 30 ms later, so requests overlap even on a busy machine
        def __init__(self, runner):
            self.runner = runner

        def step(self, *args):
            time.sleep(0.03)
            return self.runner.step(*args)

        def __getattr__(self, name):
            return getattr(self.runner, name)

    root, _ = tiny_variants
    prompts = [f"def f{i}(x):" + " return x" * i for i in range(8)]

    def serve_all(max_batch: int):
        (root / "state.json").unlink(missing_ok=True)
        served = adaptive_served(root, policy="static", static_arm="2:4-fp32", escalation=True, audit_fraction=0.0)
        with LiveServer(served, max_batch=max_batch) as live:
            worker = live.app.state.worker
            controller = worker.runner.controller
            controller.escalate = lambda arm, entropy: arm != controller.arms.dense and int(entropy * 10) % 3 == 0
            for lane in worker.scheduler.lanes:
                lane.runner = Delayed(lane.runner)
            worker.runner.runners[:] = [lane.runner for lane in worker.scheduler.lanes]

            def call(i):
                time.sleep(0.03 * i)
                body = {"prompt": prompts[i], "max_tokens": 12, "temperature": 0}
                return httpx.post(f"{live.url}/v1/completions", json=body, timeout=120).json()["choices"][0]["text"]

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                texts = list(pool.map(call, range(8)))
            return texts, live.metric("sparsetrt_adaptive_escalations_total"), \
                live.metric("sparsetrt_batch_size_sum") / live.metric("sparsetrt_batch_size_count")

    alone, escalated_alone, _ = serve_all(1)
    batched, escalated, mean_batch = serve_all(8)
    assert batched == alone and escalated == escalated_alone
    # a third of the tokens escalate: a request escalates at its prompt's last position (inside open_request) one
    # time in three, so most of the escalations moved a decoding row into dense's batch
    assert escalated >= 4 and mean_batch > 1.5


def test_serve_adaptive_with_a_corrupt_state_starts_fresh(tiny_variants, caplog):
    from serve_support import LiveServer

    root, _ = tiny_variants
    (root / "state.json").write_text('{"version": 1, "arms": ')
    with caplog.at_level(logging.WARNING, logger="sparsetrt.adaptive"):
        with LiveServer(adaptive_served(root, policy="thompson")) as server:
            assert server.client.get("/health").json()["status"] == "ready"
            assert server.client.post("/v1/completions", json={"prompt": "z", "max_tokens": 2}).status_code == 200
    assert "starting a fresh controller" in caplog.text
    assert (root / "state.json.corrupt").is_file()
    assert sum(json.loads((root / "state.json").read_text())["decisions"]) == 1


def test_serve_adaptive_refuses_bad_settings(tiny_variants, tmp_path):
    from sparsetrt.runtime.adaptive.router import resolve_adaptive

    root, _ = tiny_variants
    with pytest.raises(SparsetrtError, match="needs a fitted threshold"):
        resolve_adaptive(root / "variants", ControllerSettings(policy="threshold"), state_path=tmp_path / "none")
    (tmp_path / "fresh.json").write_text(json.dumps(Controller(ARMS, ControllerSettings()).state()))
    with pytest.raises(SparsetrtError, match="needs a fitted threshold"):  # a state without a threshold
        resolve_adaptive(root / "variants", ControllerSettings(policy="threshold"), state_path=tmp_path / "fresh.json")
    with pytest.raises(SparsetrtError, match="policy static needs one of the variants"):
        adaptive_served(root, policy="static", static_arm="int9")
    with pytest.raises(SparsetrtError, match="build the variant set first"):
        resolve_adaptive(tmp_path, ControllerSettings())


def test_structured_variants_join_the_set_and_serve_with_escalation_to_dense(tiny_variants, tiny_checkpoint,
                                                                              calib_file, tmp_path):
    """A shrunk checkpoint (another MLP width, so other weight shapes) joins the variant set next to dense and 2:4,
    is timed like them, and serves: a request routed to it and escalated mid-generation moves into dense's batch
    (dense's own prefill and cache) and finishes."""
    from serve_support import LiveServer

    from sparsetrt.prune.settings import ShrinkSettings
    from sparsetrt.prune.shrink_stage import shrink_checkpoint
    from sparsetrt.runtime.adaptive.router import resolve_adaptive
    from sparsetrt.runtime.adaptive.variant_set import build_variant_set

    root, _ = tiny_variants
    work = tmp_path / "structured"
    shrink_checkpoint(str(tiny_checkpoint), work / "mlp-half" / "shrunk", ShrinkSettings(mlp="0.5"),
                      CalibrationSettings(corpus=str(calib_file), samples=4, seq_len=32))
    with pytest.raises(SparsetrtError, match="no structured variant 'mlp-half\\+distill'"):  # refused before work
        build_variant_set(root / "artifacts", tmp_path / "refused", structured=work,
                          structured_names=["mlp-half", "mlp-half+distill"], progress=False)
    assert not (tmp_path / "refused").exists() and not (work / "mlp-half" / "onnx").exists()

    manifest = build_variant_set(root / "artifacts", tmp_path / "variants", structured=work,
                                 structured_names=["mlp-half"], progress=False)
    entry = {v["name"]: v for v in manifest["variants"]}["mlp-half-fp32"]
    assert {v["name"] for v in manifest["variants"]} == {"dense-fp32", "2:4-fp32", "mlp-half-fp32"}
    assert entry["structured"] and entry["pattern"] == "mlp-half" and entry["precision"] == "fp32"
    assert Path(entry["path"]).parent == work / "mlp-half" / "onnx" and entry["cost"]["decode_ms"] > 0
    dense_bytes = {v["name"]: v for v in manifest["variants"]}["dense-fp32"]["file_bytes"]
    assert entry["file_bytes"] < dense_bytes  # the narrower MLP is in the file

    served = resolve_adaptive(tmp_path / "variants", ControllerSettings(policy="static", static_arm="mlp-half-fp32",
                                                                        escalation=True, audit_fraction=0.0),
                              state_path=tmp_path / "state.json")
    with LiveServer(served, max_batch=4) as live:
        controller = live.app.state.worker.runner.controller
        controller.escalate = lambda arm, entropy: arm != controller.arms.dense  # every shrunk row escalates
        r = live.client.post("/v1/completions", json={"prompt": "def f(x):", "max_tokens": 6, "temperature": 0})
        assert r.status_code == 200, r.text
        assert live.metric("sparsetrt_adaptive_decisions_total", variant="mlp-half-fp32") == 1
        assert live.metric("sparsetrt_adaptive_escalations_total") == 1


def test_cli_reports_a_missing_variant_set(tmp_path, capsys):
    from sparsetrt.cli import main

    assert main(["bench", "adaptive", "--variants", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 2
    assert "build the variant set first" in capsys.readouterr().err
    assert main(["serve", "--adaptive", "linucb", "--variants", str(tmp_path / "none")]) == 2
    assert "build the variant set first" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
