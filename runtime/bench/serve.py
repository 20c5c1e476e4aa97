"""`make bench-serve`: start `sparsetrt serve` in its own process, load it from this one over loopback, write
benchmarks/serve.{md,json,png}.

Per precision (fp32 and INT8 by default), two servers in the same run: continuous batching (`--max-batch N`) and
one request at a time (`--max-batch 1`, what the server did before batching), each against the same load (the
acceptance run is 32 clients for 60 s: zero 5xx, every response well-formed, /metrics equal to what the clients
saw). Then `overload` (the batching server with a queue of 4): the excess must be refused quickly with 429 while
the server stays healthy. Each server is stopped with SIGTERM and must exit 0. The batching servers' /metrics
also give the batch-size distribution, the mean inter-token latency and the model thread's time spent re-packing
KV caches (rows joining and leaving), the cost that bucketing by length would avoid.
"""

from __future__ import annotations

import asyncio
import os
import platform
from pathlib import Path

import httpx

from sparsetrt.artifacts import pyplot, save_figure, write_json, write_text_atomic
from sparsetrt.runtime.bench.settings import ServeBenchSettings
from sparsetrt.runtime.measure import cpu_name
from sparsetrt.runtime.serve.loadtest import run_load
from sparsetrt.runtime.serve.metrics import scrape_batching
from sparsetrt.runtime.serve.process import free_port, start_server, stop_server, wait_until_ready
from sparsetrt.runtime.settings import LoadSettings

TARGET_SPEEDUP = 2.5  # batching must pay: batched tokens/s >= 2.5x unbatched, with a lower p99 latency


def run_phase(name: str, settings: ServeBenchSettings, precision: str, load: LoadSettings, work: Path,
              *extra: str) -> dict:
    port = free_port()
    log_path = work / f"server-{name}.log"
    serve_args = ["--model", settings.model, "--backend", settings.backend, "--precision", precision,
                  "--request-timeout", "600", *extra]
    process = start_server(serve_args, port, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        health = wait_until_ready(url, process=process, log_path=log_path)
        print(f"==> {name}: {load.clients} clients for {load.duration_s:.0f} s against {health['name']} "
              f"({health['backend']} {health['precision']}, max batch {health['batch']['max_batch']})", flush=True)
        load.url = url
        result = asyncio.run(run_load(load))
        result["batching"] = scrape_batching(httpx.get(f"{url}/metrics", timeout=30).text)
        result["batching"]["peak_batch_tokens"] = httpx.get(f"{url}/health", timeout=30).json()["batch"][
            "peak_batch_tokens"]
    finally:
        exit_code = stop_server(process)
    result.update(phase=name, precision=precision, server=health, server_args=list(extra),
                  sigterm_exit_code=exit_code)
    return result


def run_serve_bench(settings: ServeBenchSettings, out: Path, work: Path) -> dict:
    out, work = Path(out), Path(work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    def load(duration_s: float) -> LoadSettings:
        return LoadSettings(clients=settings.clients, duration_s=duration_s, max_tokens=settings.max_tokens)

    phases = []
    for precision in settings.precisions:
        for batch in (settings.max_batch, 1):
            name = f"{precision}-{'batched' if batch > 1 else 'unbatched'}"
            phases.append(run_phase(name, settings, precision, load(settings.duration_s), work,
                                    "--max-batch", str(batch)))
    phases.append(run_phase("overload", settings, settings.precisions[0], load(settings.overload_duration_s), work,
                            "--max-batch", str(settings.max_batch), "--max-queue", str(settings.overload_queue)))
    report = {"format": "sparsetrt.serve-bench/2", "settings": settings.model_dump(),
              "machine": f"{cpu_name()} ({os.cpu_count()} CPUs), {platform.platform()}; server and clients share it",
              "phases": {p["phase"]: {k: v for k, v in p.items() if k != "records"} for p in phases},
              "comparison": compare(phases)}
    write_json(out / "serve.json", report)
    write_text_atomic(out / "serve.md", markdown(report))
    plot(out / "serve.png", phases)
    return report


def compare(phases: list[dict]) -> dict:
    """Per precision: batched over unbatched tokens/s, both p99 latencies, and whether the target is met."""
    by_name = {p["phase"]: p["summary"] for p in phases}
    result = {}
    for precision in sorted({p["precision"] for p in phases if p["phase"].endswith("-batched")}):
        batched, single = by_name.get(f"{precision}-batched"), by_name.get(f"{precision}-unbatched")
        if not batched or not single:
            continue
        speedup = batched["tokens_per_s"] / single["tokens_per_s"] if single["tokens_per_s"] else float("nan")
        lower_p99 = batched["latency_s"]["p99"] < single["latency_s"]["p99"]
        result[precision] = {"tokens_per_s_speedup": speedup, "p99_batched_s": batched["latency_s"]["p99"],
                             "p99_unbatched_s": single["latency_s"]["p99"], "lower_p99": lower_p99,
                             "target_met": speedup >= TARGET_SPEEDUP and lower_p99}
    return result


def summary_lines(report: dict, out: Path) -> list[str]:
    """What `sparsetrt bench serve` prints: one line per phase, the batched/unbatched ratios, then the files."""
    lines = []
    for name, phase in report["phases"].items():
        s, b = phase["summary"], phase["batching"]
        lines.append(f"{name}: {s['requests']} requests {s['by_status']}, 5xx {s['status_5xx']}, malformed "
                     f"{s['malformed']}, p99 {s['latency_s']['p99']:.2f} s, {s['tokens_per_s']:.1f} tokens/s, mean "
                     f"batch {b['mean_batch']:.2f}, metrics match {s['metrics_match']}, SIGTERM exit "
                     f"{phase['sigterm_exit_code']}")
    for precision, c in report["comparison"].items():
        lines.append(f"{precision}: batched {c['tokens_per_s_speedup']:.2f}x the unbatched tokens/s, p99 "
                     f"{c['p99_batched_s']:.2f} s vs {c['p99_unbatched_s']:.2f} s; target (>= {TARGET_SPEEDUP}x and "
                     f"lower p99) {'met' if c['target_met'] else 'NOT met'}")
    lines.append(f"wrote {Path(out) / 'serve.md'}, serve.json, serve.png")
    return lines


def markdown(report: dict) -> str:
    phases = report["phases"]
    lines = ["# sparsetrt serve under load: continuous batching vs one request at a time", "",
             f"Machine: {report['machine']}.", "",
             "Client: `sparsetrt loadtest` (asyncio + httpx, one connection per client, each client waits for its "
             "answer before sending the next; half the requests streamed). Prompts: the 10 parity prompts; "
             f"max_tokens {report['settings']['max_tokens']}, temperature 0.7, a seed per request. Each phase "
             "starts its own server; batched and unbatched servers of a precision run back to back in one run.", "",
             "| phase | server | clients × s | requests | by status | 5xx | malformed | p50 / p95 / p99 latency s "
             "| stream TTFT p50 / p99 s | req/s | tokens/s | mean batch (decode steps) | mean ITL ms | re-pack % "
             "| peak KV positions | /metrics = clients | health | SIGTERM exit |",
             "|---|---|---|---:|---|---:|---:|---|---|---:|---:|---|---:|---:|---:|---|---|---:|"]
    for name, p in phases.items():
        s, cfg, b = p["summary"], p["settings"], p["batching"]
        server = (f"{p['server']['backend']} {p['server']['precision']}, max batch {p['server']['batch']['max_batch']}"
                  f", queue {p['server']['max_queue']}")
        lat, ttft = s["latency_s"], s["ttft_stream_s"]
        codes = ", ".join(f"{c}: {n}" for c, n in s["by_status"].items())
        health = "200 throughout" if not s["health_failures_during"] and s["health_after"] == 200 else \
            f"{s['health_failures_during']} failed checks, after: {s['health_after']}"
        repack = 100 * b["repack_s"] / p["wall_s"] if p["wall_s"] else float("nan")
        lines.append(f"| {name} | {server} | {cfg['clients']} × {cfg['duration_s']:.0f} | {s['requests']} | {codes} "
                     f"| {s['status_5xx']} | {s['malformed']} | {lat['p50']:.2f} / {lat['p95']:.2f} / {lat['p99']:.2f} "
                     f"| {ttft['p50']:.2f} / {ttft['p99']:.2f} | {s['throughput_rps']:.2f} | {s['tokens_per_s']:.1f} "
                     f"| {b['mean_batch']:.2f} ({b['steps']:.0f}) | {b['itl_mean_s'] * 1000:.1f} | {repack:.2f} "
                     f"| {b['peak_batch_tokens']} "
                     f"| {'yes' if s['metrics_match'] else 'NO: ' + str(s['metrics_by_status'])} | {health} "
                     f"| {p['sigterm_exit_code']} |")
    lines += ["", f"Target: batched tokens/s >= {TARGET_SPEEDUP}x unbatched with a lower p99 latency.", ""]
    for precision, c in report["comparison"].items():
        lines.append(f"- {precision}: {c['tokens_per_s_speedup']:.2f}x the tokens/s; p99 {c['p99_batched_s']:.2f} s "
                     f"batched vs {c['p99_unbatched_s']:.2f} s unbatched: "
                     f"**{'met' if c['target_met'] else 'not met'}**.")
    over = phases.get("overload", {}).get("summary")
    if over:
        refused = over["refused_latency_s"]
        lines += ["", f"Overload: refused requests were answered in p50 {refused['p50'] * 1000:.1f} ms, p99 "
                      f"{refused['p99'] * 1000:.1f} ms, max {refused['max'] * 1000:.1f} ms."]
    lines += ["", "Latency is request sent -> last byte received, for 200 responses, queue wait included. Mean batch "
                  "is rows per decode step (the server's sparsetrt_batch_size histogram); re-pack % is the share of "
                  "the phase's wall time the model thread spent joining rows into and compacting the KV cache.", "",
              "![throughput and batch sizes](serve.png)", ""]
    return "\n".join(lines)


def plot(path: Path, phases: list[dict]) -> None:
    """Left: tokens/s and p99 latency per phase; right: how many rows each decode step of a batched server had."""
    plt = pyplot()
    if plt is None:
        return
    fig, (speed, sizes) = plt.subplots(1, 2, figsize=(13, 4.5))
    names = [p["phase"] for p in phases]
    speed.bar(names, [p["summary"]["tokens_per_s"] for p in phases], color="tab:blue")
    speed.set_ylabel("tokens/s (all clients)")
    speed.tick_params(axis="x", rotation=30)
    p99 = speed.twinx()
    p99.plot(names, [p["summary"]["latency_s"]["p99"] for p in phases], "o-", color="tab:red")
    p99.set_ylabel("p99 latency (s)", color="tab:red")
    speed.set_title("throughput (bars) and p99 latency (line)")
    for p in phases:
        buckets = p["batching"]["batch_buckets"]
        if p["batching"]["steps"] and p["server"]["batch"]["max_batch"] > 1:
            edges = sorted(buckets)
            counts = [buckets[e] - (buckets[edges[i - 1]] if i else 0) for i, e in enumerate(edges)]
            sizes.plot(edges, counts, "o-", label=p["phase"])
    sizes.set_xscale("log", base=2)
    sizes.set_xlabel("rows in the decode step (histogram bucket upper edge)")
    sizes.set_ylabel("decode steps")
    sizes.set_title("batch sizes of the batching servers")
    sizes.legend()
    save_figure(fig, path)
