"""`make bench-serve`: start `sparsetrt serve` in its own process, load it from this one over loopback, write
benchmarks/serve.{md,json,png}.

Two phases, each against a fresh server: `load` (the default queue; the acceptance run is 32 clients for 60 s:
zero 5xx, every response well-formed, /metrics equal to what the clients saw) and `overload` (a queue of 4:
the excess must be refused quickly with 429 while the server stays healthy). Each server is stopped with
SIGTERM and must exit 0.
"""

from __future__ import annotations

import asyncio
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from sparsetrt.artifacts import save_figure, write_json, write_text_atomic
from sparsetrt.runtime.serve.loadtest import LoadSettings, run_load
from sparsetrt.runtime.serve.process import free_port, start_server, stop_server, wait_until_ready


@dataclass
class ServeBenchSettings:
    model: str = "artifacts"
    backend: str = "onnxruntime"
    precision: str = "auto"
    clients: int = 32
    duration_s: float = 60.0
    max_tokens: int = 32
    overload_queue: int = 4
    overload_duration_s: float = 20.0


def run_phase(name: str, settings: ServeBenchSettings, load: LoadSettings, work: Path, *extra: str) -> dict:
    port = free_port()
    log_path = work / f"server-{name}.log"
    serve_args = ["--model", settings.model, "--backend", settings.backend, "--precision", settings.precision,
                  "--request-timeout", "600", *extra]
    process = start_server(serve_args, port, log_path)
    try:
        health = wait_until_ready(f"http://127.0.0.1:{port}", process=process, log_path=log_path)
        print(f"==> {name}: {load.clients} clients for {load.duration_s:.0f} s against {health['name']} "
              f"({health['backend']} {health['precision']})", flush=True)
        load.url = f"http://127.0.0.1:{port}"
        result = asyncio.run(run_load(load))
    finally:
        exit_code = stop_server(process)
    result.update(phase=name, server=health, server_args=list(extra), sigterm_exit_code=exit_code)
    return result


def run_serve_bench(settings: ServeBenchSettings, out: Path, work: Path) -> dict:
    from sparsetrt.runtime.measure import cpu_name

    out, work = Path(out), Path(work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    load = run_phase("load", settings, LoadSettings(url="", clients=settings.clients, duration_s=settings.duration_s,
                                                    max_tokens=settings.max_tokens), work)
    overload = run_phase("overload", settings, LoadSettings(url="", clients=settings.clients,
                                                            duration_s=settings.overload_duration_s,
                                                            max_tokens=settings.max_tokens),
                         work, "--max-queue", str(settings.overload_queue))
    report = {"format": "sparsetrt.serve-bench/1", "settings": asdict(settings),
              "machine": f"{cpu_name()} ({os.cpu_count()} CPUs), {platform.platform()}; server and clients share it",
              "phases": {p["phase"]: {k: v for k, v in p.items() if k != "records"} for p in (load, overload)}}
    write_json(out / "serve.json", report)
    write_text_atomic(out / "serve.md", markdown(report))
    plot(out / "serve.png", [load, overload])
    return report


def summary_lines(report: dict, out: Path) -> list[str]:
    """What `sparsetrt bench-serve` prints: one line per phase, then the files."""
    lines = []
    for name, phase in report["phases"].items():
        s = phase["summary"]
        lines.append(f"{name}: {s['requests']} requests {s['by_status']}, 5xx {s['status_5xx']}, malformed "
                     f"{s['malformed']}, p99 {s['latency_s']['p99']:.2f} s, {s['throughput_rps']:.2f} req/s, metrics "
                     f"match {s['metrics_match']}, SIGTERM exit {phase['sigterm_exit_code']}")
    lines.append(f"wrote {Path(out) / 'serve.md'}, serve.json, serve.png")
    return lines


def markdown(report: dict) -> str:
    phases = report["phases"]
    lines = ["# sparsetrt serve under load", "",
             f"Machine: {report['machine']}.", "",
             "Client: `sparsetrt loadtest` (asyncio + httpx, one connection per client, each client waits for its "
             "answer before sending the next; half the requests streamed). Prompts: the 10 parity prompts; "
             f"max_tokens {report['settings']['max_tokens']}, temperature 0.7, a seed per request.", "",
             "| phase | server | clients × s | requests | by status | 5xx | malformed | p50 / p95 / p99 latency s "
             "| stream TTFT p50 / p99 s | req/s | tokens/s | /metrics = clients | health | SIGTERM exit |",
             "|---|---|---|---:|---|---:|---:|---|---|---:|---:|---|---|---:|"]
    for name, p in phases.items():
        s, cfg = p["summary"], p["settings"]
        server = f"{p['server']['backend']} {p['server']['precision']}, queue {p['server']['max_queue']}"
        lat, ttft = s["latency_s"], s["ttft_stream_s"]
        codes = ", ".join(f"{c}: {n}" for c, n in s["by_status"].items())
        health = "200 throughout" if not s["health_failures_during"] and s["health_after"] == 200 else \
            f"{s['health_failures_during']} failed checks, after: {s['health_after']}"
        lines.append(f"| {name} | {server} | {cfg['clients']} × {cfg['duration_s']:.0f} | {s['requests']} | {codes} "
                     f"| {s['status_5xx']} | {s['malformed']} | {lat['p50']:.2f} / {lat['p95']:.2f} / {lat['p99']:.2f} "
                     f"| {ttft['p50']:.2f} / {ttft['p99']:.2f} | {s['throughput_rps']:.2f} | {s['tokens_per_s']:.1f} "
                     f"| {'yes' if s['metrics_match'] else 'NO: ' + str(s['metrics_by_status'])} | {health} "
                     f"| {p['sigterm_exit_code']} |")
    over = phases.get("overload", {}).get("summary")
    if over:
        refused = over["refused_latency_s"]
        lines += ["", f"Overload: refused requests were answered in p50 {refused['p50'] * 1000:.1f} ms, p99 "
                      f"{refused['p99'] * 1000:.1f} ms, max {refused['max'] * 1000:.1f} ms."]
    lines += ["", "Latency is request sent -> last byte received, for 200 responses; it includes the queue wait, so "
                  "with one model thread it grows with the number of clients (throughput is what one generation at "
                  "a time sustains on this CPU).", "", "![latency over time](serve.png)", ""]
    return "\n".join(lines)


def plot(path: Path, phases: list[dict]) -> None:
    from sparsetrt.artifacts import pyplot

    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(phases), figsize=(6 * len(phases), 4), squeeze=False)
    colors = {200: "tab:blue", 429: "tab:orange", 503: "tab:red"}
    for ax, phase in zip(axes[0], phases):
        for status in sorted({r["status"] for r in phase["records"]}, key=str):
            rows = [r for r in phase["records"] if r["status"] == status]
            ax.scatter([r["start"] for r in rows], [r["latency_s"] for r in rows], s=8,
                       color=colors.get(status, "black"), label=f"{status} ({len(rows)})")
        ax.set_title(f"{phase['phase']}: queue {phase['server']['max_queue']}, {phase['settings']['clients']} clients")
        ax.set_xlabel("request sent at (s)")
        ax.set_ylabel("latency (s)")
        ax.legend()
    save_figure(fig, path)
