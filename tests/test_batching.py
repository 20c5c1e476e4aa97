"""Continuous batching (sparsetrt.runtime.serve.scheduler) on a tiny random Llama, through a live server: every
request's output is what it gets served alone, on each backend that runs here, whatever it was batched with."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import numpy as np
import pytest
from serve_support import LiveServer, SlowServed

from sparsetrt.export.ort_target import write_ort_target
from sparsetrt.runtime.backends.base import cache_tensors, join_caches, select_cache_rows
from sparsetrt.runtime.serve.served_model import resolve_served_model

# 16 prompts of different lengths (2 .. 71 tokens of the tiny tokenizer), each with its own max_tokens.
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex a jolly vexed king".split()
PROMPTS = [" ".join((WORDS * 2)[i % 7: i % 7 + 1 + (i * 5) % 19]) for i in range(16)]
MAX_TOKENS = [4 + (i * 7) % 21 for i in range(16)]


@pytest.fixture(scope="module", params=["pytorch", "onnxruntime", "onnxruntime-target"])
def served(request, pruned_tiny, exported_tiny, tmp_path_factory):
    """The tiny model on PyTorch, on ONNX Runtime through the exported (TensorRT-shaped) decoder, and through the
    ONNX Runtime target (GroupQueryAttention: a chunked prefill of several rows runs row by row)."""
    if request.param == "pytorch":
        return resolve_served_model(str(pruned_tiny), "pytorch", max_prompt_tokens=256)
    onnx_dir, manifest = exported_tiny
    path = onnx_dir / manifest["files"]["fp32"]["onnx"]
    if request.param == "onnxruntime-target":
        path = tmp_path_factory.mktemp("ort-target") / "model.ort.onnx"
        write_ort_target(pruned_tiny, path, "fp32")
    return resolve_served_model(str(path), "onnxruntime", tokenizer=str(pruned_tiny), max_prompt_tokens=256)


def complete(url: str, i: int, delay: float = 0.0, **extra) -> dict:
    time.sleep(delay)
    body = {"prompt": PROMPTS[i], "max_tokens": MAX_TOKENS[i], "temperature": 0, **extra}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def alone(served, **extra) -> list[dict]:
    """Each prompt served by a one-request-at-a-time server, one after the other (SlowServed without a delay: the
    same runner as the batched servers, end-of-sequence masked)."""
    with LiveServer(SlowServed(served, 0.0), max_batch=1, max_tokens_limit=64) as live:
        return [complete(live.url, i, **extra) for i in range(16)]


def batched(live, **extra) -> list[dict]:
    """The 16 requests at once, arriving over ~0.5 s, so rows join and leave a running batch."""
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(complete, live.url, i, (i % 8) * 0.06, **extra) for i in range(16)]
        return [f.result() for f in futures]


def batch_sizes(live) -> tuple[float, float, float]:
    """(decode steps, rows summed over steps, steps with a single row), from /metrics."""
    count = live.metric("sparsetrt_batch_size_count")
    return count, live.metric("sparsetrt_batch_size_sum"), live.metric("sparsetrt_batch_size_bucket", le="1.0")


def texts(results: list[dict]) -> list[tuple[str, int, str]]:
    return [(r["choices"][0]["text"], r["usage"]["completion_tokens"], r["choices"][0]["finish_reason"])
            for r in results]


def test_greedy_output_is_what_each_request_gets_alone(served):
    expected = texts(alone(served))
    # SlowServed: 20 ms per step, so the staggered arrivals land while others decode
    with LiveServer(SlowServed(served, 0.02), max_batch=16, max_tokens_limit=64, prefill_chunk=16) as live:
        got = texts(batched(live))
        steps, rows, single = batch_sizes(live)
        health = live.client.get("/health").json()
    assert got == expected
    assert rows / steps > 3 and single < steps  # they really were batched: > 3 rows per step on average
    assert health["batch"]["running"] == 0 and health["batch"]["batch_tokens"] == 0  # every row retired


def test_seeded_sampling_repeats_whatever_it_is_batched_with(served):
    sampled = {"temperature": 0.9, "top_p": 0.95}
    expected = texts(alone(served, seed=7, **sampled))
    with LiveServer(SlowServed(served, 0.02), max_batch=16, max_tokens_limit=64) as live:
        first = texts(batched(live, seed=7, **sampled))
        again = texts(batched(live, seed=7, **sampled))
    assert first == expected and again == expected
    assert len({t for t, *_ in expected}) > 8  # the prompts really sampled different texts


def test_the_token_budget_bounds_the_batch(served):
    # prompt 15 (71 tokens) + 24 new reserves 95 positions: 200 hold two such rows, never three
    with LiveServer(SlowServed(served, 0.02), max_batch=16, max_batch_tokens=200, max_tokens_limit=64) as live:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda _: complete(live.url, 15, max_tokens=24), range(6)))
        steps, rows, _ = batch_sizes(live)
        two_at_most = live.metric("sparsetrt_batch_size_bucket", le="2.0")
        mixed = batched(live)  # the 16 mixed requests: short ones share the budget more widely
        peak = live.client.get("/health").json()["batch"]["peak_batch_tokens"]
        over = live.client.post("/v1/completions", json={"prompt": " ".join(WORDS * 3), "max_tokens": 64})
    assert len({r["choices"][0]["text"] for r in got}) == 1 and len(mixed) == 16
    assert two_at_most == steps and rows / steps > 1.5  # two rows most of the time, never three
    assert 0 < peak <= 200  # the padded cache (rows x widest past) never passed the budget
    assert over.status_code == 400 and over.json()["error"]["code"] == "batch_tokens_exceeded"


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(served):
    long_prompt = " ".join(WORDS * 3)  # ~200 tokens: 13 chunks of 16
    with LiveServer(served, max_batch=4, max_tokens_limit=64, prefill_chunk=16) as live:
        reference = complete(live.url, 0, prompt=long_prompt, max_tokens=8)
        stream_start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            streaming = pool.submit(complete, live.url, 1, max_tokens=40)
            late = pool.submit(complete, live.url, 0, 0.05, prompt=long_prompt, max_tokens=8)
            assert late.result()["choices"][0]["text"] == reference["choices"][0]["text"]
            assert streaming.result()["usage"]["completion_tokens"] >= 1
        assert time.monotonic() - stream_start < 60


def test_cache_rows_join_and_select_keep_each_rows_past():
    rng = np.random.default_rng(0)
    a = [rng.standard_normal((2, 1, 3, 2)).astype(np.float32)]
    b = [rng.standard_normal((1, 1, 5, 2)).astype(np.float32)]
    joined = join_caches(a, 3, b, 5)[0]
    assert joined.shape == (3, 1, 5, 2)
    assert np.array_equal(joined[:2, :, 2:], a[0]) and not joined[:2, :, :2].any()  # left-padded with zeros
    assert np.array_equal(joined[2:], b[0])
    kept = select_cache_rows([joined], [0, 1], drop_columns=2)[0]
    assert np.array_equal(kept, a[0])
    torch = pytest.importorskip("torch")
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.update(torch.as_tensor(a[0]), torch.as_tensor(a[0]) + 1, 0)
    other = DynamicCache()
    other.update(torch.as_tensor(b[0]), torch.as_tensor(b[0]) + 1, 0)
    keys, values = cache_tensors(select_cache_rows(join_caches(cache, 3, other, 5), [2]))
    assert torch.equal(keys, torch.as_tensor(b[0])) and torch.equal(values, torch.as_tensor(b[0]) + 1)


def test_batching_settings_out_of_range_are_refused():
    from conftest import settings_refusal

    from sparsetrt.runtime.settings import ServeSettings

    for bad, message in (({"max_batch": 0}, "--max-batch must be >= 1"),
                         ({"max_batch_tokens": 0}, "--max-batch-tokens must be >= 1"),
                         ({"prefill_chunk": -1}, "--prefill-chunk must be >= 0")):
        assert settings_refusal(ServeSettings, **bad).startswith(message)


def test_bench_serve_runs_both_servers_in_one_run(pruned_tiny, tmp_path):
    """`sparsetrt bench serve` end to end on the tiny checkpoint (seconds, not the 60 s acceptance run)."""
    from sparsetrt.runtime.bench.serve import ServeBenchSettings, markdown, run_serve_bench

    settings = ServeBenchSettings(model=str(pruned_tiny), backend="pytorch", precisions=("fp32",), max_batch=2,
                                  clients=8, duration_s=3.0, max_tokens=8, overload_queue=1, overload_duration_s=2.0)
    report = run_serve_bench(settings, tmp_path / "out", tmp_path / "work")
    assert set(report["phases"]) == {"fp32-batched", "fp32-unbatched", "overload"}
    for name, phase in report["phases"].items():
        s = phase["summary"]
        assert s["status_5xx"] == 0 and s["malformed"] == 0 and s["metrics_match"], (name, s)
        assert phase["sigterm_exit_code"] == 0
    batched, single = (report["phases"][n]["batching"] for n in ("fp32-batched", "fp32-unbatched"))
    assert batched["mean_batch"] > 1.0 and single["mean_batch"] == 1.0 and single["repack_s"] == 0.0
    assert report["phases"]["overload"]["summary"]["by_status"].get("429", 0) > 0
    comparison = report["comparison"]["fp32"]
    assert comparison["tokens_per_s_speedup"] > 0 and isinstance(comparison["target_met"], bool)
    assert "fp32-batched" in markdown(report) and (tmp_path / "out" / "serve.png").is_file()
