"""`sparsetrt loadtest`: a bounded asyncio client against a running `sparsetrt serve` (or any OpenAI-compatible
completions server). N clients loop for D seconds, each waiting for its answer before sending the next; every
response is checked for shape; /metrics is scraped before and after so the server's counts can be compared with
what the clients saw.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path

import httpx

from sparsetrt.artifacts import write_json
from sparsetrt.errors import SparsetrtError
from sparsetrt.runtime.generate import PARITY_PROMPTS
from sparsetrt.runtime.measure import percentile
from sparsetrt.runtime.serve.metrics import scrape_counts
from sparsetrt.runtime.settings import LoadSettings


def completion_problems(body, max_tokens: int) -> list[str]:
    """What is wrong with a non-streamed completion body (empty list: well-formed)."""
    problems = []
    try:
        if body.get("object") != "text_completion" or not str(body.get("id", "")).startswith("cmpl-"):
            problems.append("object/id")
        (choice,) = body["choices"]
        if not isinstance(choice["text"], str) or choice["finish_reason"] not in ("stop", "length"):
            problems.append("choice")
        usage = body["usage"]
        if not 1 <= usage["completion_tokens"] <= max_tokens or \
                usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]:
            problems.append("usage")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        problems.append(f"shape: {exc!r}")
    return problems


def stream_problems(lines: list[str], max_tokens: int) -> list[str]:
    """What is wrong with a server-sent event stream's data lines (empty list: well-formed)."""
    if not lines or lines[-1] != "data: [DONE]":
        return ["stream does not end with data: [DONE]"]
    try:
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    except json.JSONDecodeError:
        return ["a chunk is not JSON"]
    if not chunks or "error" in chunks[-1]:
        return [f"stream error: {chunks[-1] if chunks else 'no chunks'}"]
    last = chunks[-1]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    return completion_problems({**last, "choices": [{**last["choices"][0], "text": text}]}, max_tokens)


def error_problems(body) -> list[str]:
    try:
        error = body["error"]
        return [] if set(error) == {"message", "type", "param", "code"} and error["message"] else ["error shape"]
    except (KeyError, TypeError):
        return ["error body is not {'error': {...}}"]


async def one_request(client, body: dict, max_tokens: int) -> dict:
    """Send one completion; the record of what came back and how long it took."""
    start = time.perf_counter()
    record = {"start": start, "stream": body["stream"], "status": None, "ttft_s": None, "tokens": 0, "problems": []}
    try:
        if body["stream"]:
            async with client.stream("POST", "/v1/completions", json=body) as response:
                record["status"] = response.status_code
                if response.status_code == 200:
                    lines = []
                    async for line in response.aiter_lines():
                        if line:
                            lines.append(line)
                            if record["ttft_s"] is None:
                                record["ttft_s"] = time.perf_counter() - start
                    record["problems"] = stream_problems(lines, max_tokens)
                    if not record["problems"]:
                        record["tokens"] = json.loads(lines[-2].removeprefix("data: "))["usage"]["completion_tokens"]
                else:
                    record["problems"] = error_problems(json.loads(await response.aread()))
        else:
            response = await client.post("/v1/completions", json=body)
            record["status"] = response.status_code
            if response.status_code == 200:
                record["problems"] = completion_problems(response.json(), max_tokens)
                record["ttft_s"] = None
                if not record["problems"]:
                    record["tokens"] = response.json()["usage"]["completion_tokens"]
            else:
                record["problems"] = error_problems(response.json())
    except Exception as exc:  # connection refused/reset, client timeout, a body that is not JSON
        record["status"] = record["status"] or "transport-error"
        record["problems"].append(f"{type(exc).__name__}: {exc}")
    record["latency_s"] = time.perf_counter() - start
    return record


async def run_load(settings: LoadSettings, progress=None) -> dict:
    """Drive the server for settings.duration_s; returns the records, a summary and the /metrics comparison."""
    limits = httpx.Limits(max_connections=settings.clients + 4, max_keepalive_connections=settings.clients + 4)
    async with httpx.AsyncClient(base_url=settings.url, timeout=settings.timeout_s, limits=limits) as client:
        before = scrape_counts((await client.get("/metrics")).text)
        start = time.perf_counter()
        stop_at = start + settings.duration_s
        records: list[dict] = []
        health_failures = []

        async def user(index: int):
            rng = random.Random(settings.seed * 100_003 + index)
            sent = 0
            while time.perf_counter() < stop_at:
                body = {"prompt": PARITY_PROMPTS[(index + sent) % len(PARITY_PROMPTS)],
                        "max_tokens": settings.max_tokens, "temperature": settings.temperature,
                        "seed": rng.randrange(1 << 31), "stream": rng.random() < settings.stream_fraction}
                records.append(await one_request(client, body, settings.max_tokens))
                sent += 1
                if progress:
                    progress(len(records))

        async def watch_health():
            while time.perf_counter() < stop_at:
                try:
                    response = await client.get("/health", timeout=5)
                    if response.status_code != 200:
                        health_failures.append(response.status_code)
                except httpx.TransportError as exc:
                    health_failures.append(type(exc).__name__)
                await asyncio.sleep(1.0)

        await asyncio.gather(watch_health(), *(user(i) for i in range(settings.clients)))
        wall = time.perf_counter() - start
        await asyncio.sleep(0.5)  # the server counts a response as it finishes: let the last ones land
        after = scrape_counts((await client.get("/metrics")).text)
        health_after = (await client.get("/health")).status_code
    for record in records:
        record["start"] -= start
    return {"settings": settings.model_dump(), "wall_s": wall, "records": records,
            "summary": summarize(records, wall, before, after, health_failures, health_after)}


def summarize(records: list[dict], wall_s: float, before: dict, after: dict, health_failures: list,
              health_after: int) -> dict:
    codes = Counter(str(r["status"]) for r in records)
    ok = [r for r in records if r["status"] == 200]
    refused = [r for r in records if r["status"] in (429, 503)]
    latencies = [r["latency_s"] for r in ok]
    ttfts = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    server_codes = {code: after["requests"].get(code, 0) - before["requests"].get(code, 0)
                    for code in set(after["requests"]) | set(before["requests"])}
    server_codes = {code: n for code, n in server_codes.items() if n}
    tokens = sum(r["tokens"] for r in ok)
    server_tokens = after["generated_tokens"] - before["generated_tokens"]
    return {
        "requests": len(records), "by_status": dict(sorted(codes.items())),
        "status_5xx": sum(n for code, n in codes.items() if code.startswith("5")),
        "transport_errors": codes.get("transport-error", 0),
        "malformed": sum(1 for r in records if r["problems"]),
        "malformed_examples": [r["problems"] for r in records if r["problems"]][:5],
        "latency_s": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                      "p99": percentile(latencies, 99), "max": max(latencies, default=float("nan"))},
        "ttft_stream_s": {"p50": percentile(ttfts, 50), "p99": percentile(ttfts, 99)},
        "refused_latency_s": {"p50": percentile([r["latency_s"] for r in refused], 50),
                              "p99": percentile([r["latency_s"] for r in refused], 99),
                              "max": max((r["latency_s"] for r in refused), default=float("nan"))},
        "throughput_rps": len(ok) / wall_s, "tokens_per_s": tokens / wall_s, "completion_tokens": tokens,
        "metrics_by_status": dict(sorted(server_codes.items())),
        "metrics_generated_tokens": server_tokens,
        "metrics_match": server_codes == {c: n for c, n in codes.items() if c != "transport-error"}
                         and server_tokens == tokens,
        "health_failures_during": len(health_failures), "health_after": health_after,
    }


def run_loadtest(settings: LoadSettings, out: Path | None = None) -> dict:
    """`sparsetrt loadtest`: the load against a running server; records and summary written to `out` if given."""
    try:
        result = asyncio.run(run_load(settings))
    except OSError as exc:
        raise SparsetrtError(f"cannot reach {settings.url} ({exc}); start a server with `sparsetrt serve`") from None
    if out:
        write_json(Path(out), result)
    return result


def load_passed(summary: dict) -> bool:
    """No server error and every response well-formed (what makes `sparsetrt loadtest` exit 0)."""
    return summary["status_5xx"] == 0 and summary["malformed"] == 0
