"""`sparsetrt serve` on a tiny random Llama: the OpenAI contract, bad requests, queueing, timeouts, disconnects,
metrics, and a hypothesis fuzz of the request schema. A live uvicorn server on loopback, as clients see it."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import socket
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_support import LiveServer, SlowServed, metric_value, wait_until_ready

from sparsetrt.errors import SparsetrtError
from sparsetrt.export.settings import ExportSettings
from sparsetrt.runtime.serve.served_model import resolve_served_model


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    return resolve_served_model(str(tiny_checkpoint), "pytorch", max_prompt_tokens=64)


@pytest.fixture(scope="module")
def server(served):
    with LiveServer(served, max_tokens_limit=64) as live:
        yield live


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def assert_completion(body: dict, max_tokens: int) -> None:
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert isinstance(choice["text"], str) and choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= max_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_completion_greedy_is_deterministic_and_openai_shaped(server):
    request = {"prompt": "def add(a, b):", "max_tokens": 12, "temperature": 0}
    first = server.client.post("/v1/completions", json=request)
    assert first.status_code == 200, first.text
    assert_completion(first.json(), 12)
    again = server.client.post("/v1/completions", json=request).json()
    assert again["choices"][0]["text"] == first.json()["choices"][0]["text"]
    assert server.client.get("/v1/models").json()["data"][0]["id"] == server.app.state.worker.served.name


def test_seeded_sampling_repeats_and_seeds_differ(server):
    def text(seed):
        body = {"prompt": "The", "max_tokens": 16, "temperature": 1.5, "seed": seed}
        return server.client.post("/v1/completions", json=body).json()["choices"][0]["text"]

    assert text(7) == text(7)
    assert len({text(s) for s in range(5)}) > 1


def test_stream_is_server_sent_events_and_matches_the_plain_answer(server):
    request = {"prompt": "for i in range(", "max_tokens": 20, "temperature": 0}
    plain = server.client.post("/v1/completions", json=request).json()
    with server.client.stream("POST", "/v1/completions", json={**request, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(line.startswith("data: ") for line in lines)
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == plain["usage"]
    assert len({c["id"] for c in chunks}) == 1


def test_stop_string_ends_the_text_before_it(server):
    request = {"prompt": "The", "max_tokens": 40, "temperature": 0}
    full = server.client.post("/v1/completions", json=request).json()["choices"][0]["text"]
    stop = full.strip()[3:5]  # two characters from inside the greedy text
    cut = server.client.post("/v1/completions", json={**request, "stop": [stop]}).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and stop not in cut["text"]
    assert full.startswith(cut["text"]) and len(cut["text"]) < len(full)


BAD_REQUESTS = {
    "prompt missing": ({"max_tokens": 4}, 400, "missing"),
    "prompt empty": ({"prompt": ""}, 400, "empty_prompt"),
    "prompt wrong type": ({"prompt": 42}, 400, None),
    "two prompts": ({"prompt": ["a", "b"]}, 400, None),
    "max_tokens a string": ({"prompt": "a", "max_tokens": "5"}, 400, "int_type"),
    "max_tokens a float": ({"prompt": "a", "max_tokens": 5.0}, 400, "int_type"),
    "max_tokens negative": ({"prompt": "a", "max_tokens": -3}, 400, "greater_than_equal"),
    "max_tokens zero": ({"prompt": "a", "max_tokens": 0}, 400, "greater_than_equal"),
    "max_tokens huge": ({"prompt": "a", "max_tokens": 10 ** 30}, 400, "max_tokens_too_large"),
    "max_tokens over the server limit": ({"prompt": "a", "max_tokens": 65}, 400, "max_tokens_too_large"),
    "temperature a bool": ({"prompt": "a", "temperature": True}, 400, "float_type"),
    "temperature too high": ({"prompt": "a", "temperature": 2.5}, 400, "less_than_equal"),
    "top_p zero": ({"prompt": "a", "top_p": 0}, 400, "greater_than"),
    "seed negative": ({"prompt": "a", "seed": -1}, 400, "greater_than_equal"),
    "stream a string": ({"prompt": "a", "stream": "yes"}, 400, "bool_type"),
    "five stop strings": ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, None),
    "empty stop string": ({"prompt": "a", "stop": [""]}, 400, None),
    "unknown field": ({"prompt": "a", "logprobs": 5}, 400, "unknown_field"),
    "n above one": ({"prompt": "a", "n": 2}, 400, None),
    "other model": ({"prompt": "a", "model": "gpt-4"}, 404, "model_not_found"),
    "body an array": ([{"prompt": "a"}], 400, "invalid_body"),
    "prompt over the profile": ({"prompt": "word " * 200}, 400, "context_length_exceeded"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_a_json_4xx(server, case):
    body, status, code = BAD_REQUESTS[case]
    assert_error(server.client.post("/v1/completions", json=body), status, code)


@pytest.mark.parametrize("raw", [b"{\"prompt\": \"a\",", b"not json at all", b"{\"prompt\": NaN}", b"\xff\xfe"])
def test_malformed_json_gets_400(server, raw):
    response = server.client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400)


def test_body_over_the_limit_gets_413_before_it_is_parsed(served):
    with LiveServer(served, max_body_bytes=1024) as live:
        assert_error(live.client.post("/v1/completions", json={"prompt": "x" * 2000}), 413, "body_too_large")
        assert live.client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
        assert live.metric("sparsetrt_requests_total", code="413") == 1


def test_wrong_route_and_method_are_json_errors(server):
    assert_error(server.client.get("/v1/completions"), 405)
    assert_error(server.client.post("/v1/chat/nothing", json={}), 404)


def test_server_survives_bad_requests_and_counts_them(server):
    before = server.metric("sparsetrt_requests_total", code="400")
    for body, *_ in list(BAD_REQUESTS.values())[:5]:
        server.client.post("/v1/completions", json=body)
    assert server.metric("sparsetrt_requests_total", code="400") == before + 5
    assert server.client.get("/health").status_code == 200
    assert server.client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2}).status_code == 200


def test_full_queue_answers_429_fast_and_metrics_match_the_clients(served):
    with LiveServer(SlowServed(served, 0.05), max_queue=1, max_tokens_limit=64) as live:
        def call(_):
            start = time.monotonic()
            response = httpx.post(f"{live.url}/v1/completions", json={"prompt": "a b c", "max_tokens": 8},
                                  timeout=60)
            return response.status_code, time.monotonic() - start, response

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(8)))
        codes = [code for code, *_ in results]
        assert set(codes) <= {200, 429} and codes.count(429) >= 4 and codes.count(200) >= 2
        for code, seconds, response in results:
            if code == 429:
                assert seconds < 1.0 and response.headers["retry-after"] == "1"
                assert_error(response, 429, "queue_full")
        assert live.client.get("/health").status_code == 200
        for code in (200, 429):
            assert live.metric("sparsetrt_requests_total", code=str(code)) == codes.count(code)
        assert live.metric("sparsetrt_generated_tokens_total") == sum(
            r.json()["usage"]["completion_tokens"] for c, _, r in results if c == 200)


def test_request_timeout_gives_504_while_generating_and_503_while_queued(served):
    # Steps of 0.9 s against a 1 s timeout. The first request is prefilled (0.9 s) and decoded one step (1.8 s), then
    # notices its deadline: 504. The second is sent only once the first is admitted (else both can arrive before the
    # model thread wakes and join one prefill group: CI saw [504, 504]); it waits in the queue until the next
    # admission at ~1.8 s, past its own deadline: 503.
    with LiveServer(SlowServed(served, 0.9), request_timeout_s=1.0, max_tokens_limit=64) as live:
        def call():
            return httpx.post(f"{live.url}/v1/completions", json={"prompt": "a", "max_tokens": 50}, timeout=60)

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(call)
            deadline = time.monotonic() + 0.7
            while live.client.get("/health").json()["batch"]["running"] < 1:
                assert time.monotonic() < deadline, "the first request was not admitted within 0.7 s"
                time.sleep(0.01)
            second = pool.submit(call)
            responses = [first.result(), second.result()]
        assert [r.status_code for r in responses] == [504, 503]
        assert_error(responses[0], 504, "generation_timeout")
        assert_error(responses[1], 503, "queue_timeout")
        assert live.client.get("/health").status_code == 200


def test_client_disconnect_mid_stream_frees_the_model(served):
    with LiveServer(SlowServed(served, 0.05), max_tokens_limit=64) as live:
        body = json.dumps({"prompt": "a", "max_tokens": 64, "stream": True, "temperature": 0}).encode()
        with socket.create_connection(("127.0.0.1", live.settings.port)) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            assert b"200 OK" in sock.recv(4096)
        start = time.monotonic()
        response = live.client.post("/v1/completions", json={"prompt": "b", "max_tokens": 2})
        # the 64-token stream would hold the model for ~3 s; dropped, the next request waits at most a step or two
        assert response.status_code == 200 and time.monotonic() - start < 2.0
        deadline = time.monotonic() + 5
        while live.metric("sparsetrt_cancelled_requests_total") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.metric("sparsetrt_cancelled_requests_total") == 1
        assert live.client.get("/health").status_code == 200


def test_health_is_503_until_the_model_is_warm(served):
    class Gated(SlowServed):
        def load(self):
            time.sleep(1.0)
            return super().load()

    with LiveServer(Gated(served, 0.0), wait=False) as live:
        for _ in range(100):
            try:
                health = live.client.get("/health")
                break
            except httpx.TransportError:
                time.sleep(0.02)
        assert health.status_code == 503 and health.json()["status"] == "loading"
        assert_error(live.client.post("/v1/completions", json={"prompt": "a"}), 503)
        assert wait_until_ready(live.url, timeout_s=120)["status"] == "ready"


def test_metrics_are_prometheus_with_backend_and_model_labels(server):
    server.client.post("/v1/completions", json={"prompt": "a", "max_tokens": 3, "temperature": 0})
    text = server.client.get("/metrics").text
    labels = {"backend": "pytorch", "model": server.app.state.worker.served.name}
    for name in ("sparsetrt_time_to_first_token_seconds_count", "sparsetrt_inter_token_seconds_count",
                 "sparsetrt_generated_tokens_total", "sparsetrt_prompt_tokens_total",
                 "sparsetrt_request_duration_seconds_count"):
        assert metric_value(text, name, **labels) > 0, name
    assert metric_value(text, "sparsetrt_server_info", **labels) == 1
    assert "sparsetrt_energy_joules" not in text  # CPU backend: not measurable, and /health says why
    assert "NVML" in server.client.get("/health").json()["energy"]


# --- fuzz: any JSON body is answered with 200 (a well-formed completion) or a JSON 4xx, never 5xx ---------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=6)
FIELDS = ["prompt", "model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "n", "user", "echo"]
valid_fields = {"prompt": st.text(min_size=1, max_size=40), "max_tokens": st.integers(1, 8),
                "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "seed": st.integers(0, 2 ** 62),
                "stop": st.lists(st.text(min_size=1, max_size=3), max_size=4), "stream": st.booleans()}
fuzz_bodies = st.one_of(
    st.fixed_dictionaries({"prompt": valid_fields["prompt"]},
                          optional={k: v for k, v in valid_fields.items() if k != "prompt"}),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
    json_values,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(body=fuzz_bodies)
def test_fuzz_request_schema(server, body):
    # json.dumps writes inf as Infinity (not JSON): the server must refuse it like any other malformed body
    response = server.client.post("/v1/completions", content=json.dumps(body).encode(),
                                  headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert_error(response, response.status_code)
        return
    if isinstance(body, dict) and body.get("stream"):
        lines = [line for line in response.text.splitlines() if line]
        assert lines[-1] == "data: [DONE]"
        last = json.loads(lines[-2].removeprefix("data: "))
        assert last["choices"][0]["finish_reason"] in ("stop", "length")
    else:
        assert_completion(response.json(), body.get("max_tokens", 16))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.fixed_dictionaries({"prompt": valid_fields["prompt"]},
                                  optional={k: v for k, v in valid_fields.items() if k != "prompt"}))
def test_fuzz_valid_requests_always_succeed(server, body):
    response = server.client.post("/v1/completions", json=body)
    if len(server.app.state.worker.request_tokenizer(body["prompt"])["input_ids"]) > 64:
        assert_error(response, 400, "context_length_exceeded")
        return
    assert response.status_code == 200, response.text


def test_onnxruntime_backend_serves_the_exported_file(exported_tiny, pruned_tiny):
    onnx_dir, manifest = exported_tiny
    served = resolve_served_model(str(onnx_dir / manifest["files"]["fp32"]["onnx"]), "onnxruntime",
                                  tokenizer=str(pruned_tiny))
    assert served.precision == "fp32" and served.max_context_tokens == 512
    with LiveServer(served) as live:
        body = live.client.post("/v1/completions", json={"prompt": "def f(x):", "max_tokens": 6,
                                                         "temperature": 0}).json()
        assert_completion(body, 6)
        assert live.metric("sparsetrt_server_info", backend="onnxruntime") == 1


def fake_artifacts(root, tiny_checkpoint):
    """An artifacts tree as `make demo` + `make engine` leave it (the engine bytes are never read here)."""
    shutil.copytree(tiny_checkpoint, root / "pruned")
    (root / "onnx").mkdir()
    (root / "onnx" / "export.json").write_text("{}")
    (root / "onnx" / "model.onnx").write_bytes(b"")
    engine_dir = root / "engines" / "fp16"
    engine_dir.mkdir(parents=True)
    (engine_dir / "model.engine").write_bytes(b"not an engine")
    (engine_dir / "engine.json").write_text(json.dumps({"precision": "fp16", "options": {"max_input_len": 100,
                                                                                         "max_output_len": 28}}))
    return root


def test_resolve_an_artifacts_directory_per_backend(tiny_checkpoint, tmp_path):
    root = fake_artifacts(tmp_path / "artifacts", tiny_checkpoint)
    trt = resolve_served_model(str(root), "tensorrt")
    # the engine's profiles bound the prompt (prefill max) and prompt + completion (input + output)
    assert trt.path == root / "engines" / "fp16" / "model.engine" and trt.precision == "fp16"
    assert trt.max_prompt_tokens == 100 and trt.max_context_tokens == 128 and trt.tokenizer_dir == root / "pruned"
    ort = resolve_served_model(str(root), "onnxruntime", name="prod")
    assert ort.path == root / "onnx" / "model.onnx" and ort.name == "prod"
    assert ort.max_prompt_tokens == 511 and ort.max_context_tokens == 512  # the tiny model's 512 positions
    assert resolve_served_model(str(root), "pytorch").path == root / "pruned"


@pytest.mark.parametrize("spec, backend, message", [
    ("{tmp}/missing", "onnxruntime", "does not exist"),
    ("{artifacts}", "onnxruntime:int8", r"model.int8.onnx does not exist; run `make demo PRECISION=int8`"),
    ("{artifacts}", "tensorrt:int8", r"make engine PRECISION=int8"),
    ("{artifacts}/engines/fp16/model.engine", "onnxruntime", "for --backend tensorrt"),
    ("{checkpoint}", "tensorrt", "TensorRT serves engines"),
    ("{checkpoint}", "onnxruntime:int4", "needs calibration"),
    ("{checkpoint}", "tensorflow", "unknown backend"),
])
def test_resolve_refuses_with_the_reason(tiny_checkpoint, tmp_path, spec, backend, message):
    root = fake_artifacts(tmp_path / "artifacts", tiny_checkpoint)
    backend, _, precision = backend.partition(":")
    spec = spec.format(tmp=tmp_path, artifacts=root, checkpoint=tiny_checkpoint)
    with pytest.raises(SparsetrtError, match=message):
        resolve_served_model(spec, backend, precision or "auto")


def test_without_torch_a_checkpoint_is_refused_before_binding_and_an_onnx_file_is_served(tiny_checkpoint, tmp_path,
                                                                                          monkeypatch):
    """The CPU serving image has no torch: what needs it (a checkpoint, the pytorch backend) is one line at once;
    an exported file resolves as usual."""
    from sparsetrt.export.stage import export_checkpoint
    from sparsetrt.runtime.serve import served_model

    monkeypatch.setattr(served_model, "available", lambda name: name != "torch")
    for backend in ("onnxruntime", "pytorch"):
        with pytest.raises(SparsetrtError, match="needs torch, which is not installed here"):
            resolve_served_model(str(tiny_checkpoint), backend)
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_checkpoint, root / "pruned")
    export_checkpoint(root / "pruned", root / "onnx", ExportSettings(precisions=["fp32"], targets=["onnxruntime"]))
    with pytest.raises(SparsetrtError, match="pruned checkpoint, which needs torch"):
        resolve_served_model(str(root), "pytorch")
    assert resolve_served_model(str(root), "onnxruntime").path.name == "model.ort.onnx"
