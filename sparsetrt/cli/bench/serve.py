"""`sparsetrt bench serve`: start `sparsetrt serve`, load it (normal and overloaded queue), report."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import ServeBenchSettings
from sparsetrt.settings import Settings, option

serve_bench = lazy_import("sparsetrt.runtime.bench.serve")


class ServeBenchCommand(Settings):
    bench: ServeBenchSettings = option(ServeBenchSettings, "servers and load")
    out: str = option("benchmarks", "where serve.json, serve.md and serve.png go", min_length=1)
    work: str = option("artifacts/serve-bench", "server logs", min_length=1)


def run(s: ServeBenchCommand) -> int:
    report = serve_bench.run_serve_bench(s.bench, Path(s.out), Path(s.work))
    print("\n".join(serve_bench.summary_lines(report, Path(s.out))))
    return 0


COMMAND = Command("serve", "start `sparsetrt serve`, load it (normal + overloaded queue), write serve.md/json/png",
                  ServeBenchCommand, run, needs=("fastapi", "uvicorn", "prometheus_client", "httpx"))
