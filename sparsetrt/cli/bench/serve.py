"""`sparsetrt bench serve` (make bench-serve): start `sparsetrt serve`, load it (normal and overloaded queue),
batched against one request at a time."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command, options
from sparsetrt.errors import SparsetrtError
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import ServeBenchSettings
from sparsetrt.runtime.settings import BACKENDS, SERVE_PRECISIONS

serve_bench = lazy_import("sparsetrt.runtime.bench.serve")


def arguments(p):
    p.add_argument("--model", default="artifacts", help="what `serve --model` gets (default: the demo's artifacts)")
    p.add_argument("--backend", default="onnxruntime", choices=BACKENDS)
    p.add_argument("--precisions", default="fp32,int8",
                   help=f"comma-separated, of {', '.join(SERVE_PRECISIONS[1:])}: a batched and an unbatched server each")
    p.add_argument("--max-batch", type=int, default=8, help="the batching servers' --max-batch")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the load phase")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--overload-queue", type=int, default=4, help="queue limit of the overload phase")
    p.add_argument("--overload-duration", type=float, default=20.0)
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--work", default="artifacts/serve-bench", help="server logs")


def run(args) -> int:
    precisions = tuple(options.comma_list(args.precisions))
    if not precisions or any(p not in SERVE_PRECISIONS[1:] for p in precisions):
        raise SparsetrtError(f"--precisions {args.precisions}: use a comma-separated list of "
                             f"{', '.join(SERVE_PRECISIONS[1:])}")
    if args.max_batch < 2:
        raise SparsetrtError("--max-batch must be >= 2 (the unbatched server, --max-batch 1, is run beside it)")
    settings = ServeBenchSettings(model=args.model, backend=args.backend, precisions=precisions,
                                  max_batch=args.max_batch, clients=args.clients, duration_s=args.duration,
                                  max_tokens=args.max_tokens,
                                  overload_queue=args.overload_queue, overload_duration_s=args.overload_duration)
    report = serve_bench.run_serve_bench(settings, Path(args.out), Path(args.work))
    print("\n".join(serve_bench.summary_lines(report, Path(args.out))))
    return 0


COMMAND = Command("serve", "start `sparsetrt serve`, load it (normal + overloaded queue), write serve.md/json/png",
                  arguments, run, needs=("fastapi", "uvicorn", "prometheus_client", "httpx"))
