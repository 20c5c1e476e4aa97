"""The serve room: `sparsetrt serve`, `sparsetrt loadtest`."""

from __future__ import annotations

import json

from sparsetrt.cli import Command, options
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.settings import BACKENDS, POLICIES, SERVE_PRECISIONS

SERVER_STACK = ("fastapi", "uvicorn", "prometheus_client")

app = lazy_import("sparsetrt.runtime.serve.app")
controllers = lazy_import("sparsetrt.runtime.adaptive.controllers")
loadtest_client = lazy_import("sparsetrt.runtime.serve.loadtest")
router = lazy_import("sparsetrt.runtime.adaptive.router")
served_model = lazy_import("sparsetrt.runtime.serve.served_model")


def serve_arguments(p):
    p.add_argument("--model", default="smollm2-135m",
                   help="smollm2-135m, a checkpoint directory, an artifacts directory (make demo), .onnx or .engine")
    p.add_argument("--backend", default="onnxruntime", choices=BACKENDS)
    p.add_argument("--precision", default="auto", choices=SERVE_PRECISIONS,
                   help="which file of an artifacts directory to serve (auto: fp32 ONNX, fp16 engine)")
    p.add_argument("--served-model-name", help="the name clients send as `model` (default: from --model)")
    p.add_argument("--tokenizer", help="checkpoint dir with the tokenizer, for an .onnx/.engine outside an artifacts "
                                       "directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; 0.0.0.0 in containers)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for the model; one more gets 429")
    batching = p.add_argument_group("continuous batching")
    batching.add_argument("--max-batch", type=int, default=8,
                          help="requests decoded together; new ones join at step boundaries (1 = one at a time)")
    batching.add_argument("--max-batch-tokens", type=int, default=16384,
                          help="KV-cache positions the running batch may hold: rows x the largest prompt + "
                               "max_tokens among them (bounds its memory)")
    batching.add_argument("--prefill-chunk", type=int, default=256,
                          help="prompt tokens prefilled per step, between decode steps of the running batch, so a "
                               "long prompt does not stall the streams (0 = whole prompts)")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request, queue wait included")
    p.add_argument("--max-tokens-limit", type=int, default=256, help="largest max_tokens a request may ask for")
    p.add_argument("--max-prompt-tokens", type=int,
                   help="longest prompt (default: the engine's profile for TensorRT, else 2048)")
    p.add_argument("--max-body-bytes", type=int, default=256 * 1024)
    p.add_argument("--graceful-timeout", type=float, help="seconds in-flight requests get after SIGTERM "
                                                          "(default: the request timeout)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    adaptive = p.add_argument_group("adaptive routing (--adaptive)")
    adaptive.add_argument("--adaptive", metavar="POLICY", choices=POLICIES,
                          help=f"route each request to a variant of --variants chosen by this controller "
                               f"({', '.join(POLICIES)}); --model then names only what clients send")
    adaptive.add_argument("--variants", default="artifacts/variants",
                          help="the variant set (variants.json or its folder, from `sparsetrt variants`)")
    adaptive.add_argument("--controller-state", help="JSON state file, loaded at start and saved after every audited "
                                                     "request (default: VARIANTS/controller-POLICY.json)")
    adaptive.add_argument("--lam", type=float, default=0.25,
                          help="nats of NLL per unit of cost relative to dense, the price of compute (make "
                               "bench-adaptive reports the static frontier's slope as a guide)")
    adaptive.add_argument("--budget", type=float, help="mean cost relative to dense to spend; lam then follows dual "
                                                       "ascent towards it")
    adaptive.add_argument("--audit-fraction", type=float, default=0.1,
                          help="share of requests also run on the dense variant to learn quality")
    adaptive.add_argument("--escalation", action="store_true", help="hand a request to dense when a token's entropy "
                                                                    "crosses the learned threshold")
    adaptive.add_argument("--static-variant", help="with --adaptive static: the variant to serve")
    options.seed(adaptive, help="the controller's seed")


def serve(args) -> int:
    settings = app.ServeSettings(host=args.host, port=args.port, max_queue=args.max_queue, max_batch=args.max_batch,
                                 max_batch_tokens=args.max_batch_tokens, prefill_chunk=args.prefill_chunk,
                                 request_timeout_s=args.request_timeout, max_tokens_limit=args.max_tokens_limit,
                                 max_body_bytes=args.max_body_bytes, graceful_timeout_s=args.graceful_timeout,
                                 log_level=args.log_level).validate()
    if args.adaptive:
        controller = controllers.ControllerSettings(policy=args.adaptive, lam=args.lam, budget=args.budget,
                                                    audit_fraction=args.audit_fraction, escalation=args.escalation,
                                                    static_arm=args.static_variant, seed=args.seed)
        served = router.resolve_adaptive(args.variants, controller, name=args.served_model_name,
                                         state_path=args.controller_state, max_prompt_tokens=args.max_prompt_tokens)
    else:
        served = served_model.resolve_served_model(args.model, args.backend, args.precision,
                                                   name=args.served_model_name,
                                                   max_prompt_tokens=args.max_prompt_tokens, tokenizer=args.tokenizer)
    return app.serve(served, settings)


def loadtest_arguments(p):
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--stream-fraction", type=float, default=0.5)
    p.add_argument("--out", help="write the records and summary to this JSON file")


def loadtest(args) -> int:
    settings = loadtest_client.LoadSettings(url=args.url, clients=args.clients, duration_s=args.duration,
                                            max_tokens=args.max_tokens, stream_fraction=args.stream_fraction)
    summary = loadtest_client.run_loadtest(settings, args.out)["summary"]
    print(json.dumps(summary, indent=2))
    return 0 if loadtest_client.load_passed(summary) else 1


COMMANDS = [
    Command("serve", "OpenAI-compatible completions server (/v1/completions, /health, /metrics)", serve_arguments,
            serve, needs=SERVER_STACK),
    Command("loadtest", "N concurrent clients against a running server; latency, throughput, errors",
            loadtest_arguments, loadtest, needs=("httpx",)),
]
