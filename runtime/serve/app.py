"""`sparsetrt serve`: an OpenAI-compatible completions server over any runtime backend (FastAPI + uvicorn).

  POST /v1/completions   prompt, max_tokens, temperature, top_p, seed, stop, stream (server-sent events)
  GET  /v1/models        the one model served
  GET  /health           200 once the model is loaded and warmed up; 503 while loading, draining or failed
  GET  /metrics          Prometheus text (sparsetrt.runtime.serve.metrics)

Requests wait in a bounded queue in front of one model thread (sparsetrt.runtime.serve.worker), which batches
them continuously (sparsetrt.runtime.serve.scheduler: admitted at step boundaries, --max-batch rows within
--max-batch-tokens of KV cache, prompts prefilled in --prefill-chunk pieces). A full queue answers 429 at once;
a request that outlives --request-timeout gets 503 (still queued) or 504 (generating).
Every error is JSON in OpenAI's shape, {"error": {"message", "type", "param", "code"}}. SIGTERM stops
accepting connections, lets queued and running requests finish, then exits 0.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import signal
import socket
import time
import uuid
from contextlib import asynccontextmanager
from typing import Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

import sparsetrt
from sparsetrt.errors import SparsetrtError
from sparsetrt.runtime.generate import Sampling
from sparsetrt.runtime.serve.errors import ServeError
from sparsetrt.runtime.serve.metrics import ServeMetrics, nvml_energy_counter
from sparsetrt.runtime.serve.scheduler import BatchLimits
from sparsetrt.runtime.serve.worker import GenerationWorker, Job, seed_for
from sparsetrt.runtime.settings import ServeSettings
from sparsetrt.settings import SEED_MAX

log = logging.getLogger("sparsetrt.serve")


# JSON allows "\ud800" escapes that decode to half a UTF-16 pair: no tokenizer or UTF-8 encoder accepts them.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class CompletionRequest(BaseModel):
    """OpenAI's completions request, the fields this server honours. Unknown fields are refused rather than
    silently ignored, so a client never believes an option (logprobs, best_of, ...) took effect."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    prompt: str | list[str] = Field(description="the prompt (a list must hold exactly one)")
    model: str | None = Field(None, description="must be the served model's name when given")
    max_tokens: int = Field(16, ge=1, description="tokens to generate at most (server limit: see /health)")
    temperature: float = Field(1.0, ge=0, le=2, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="same seed, same prompt, same output")
    stop: str | list[str] | None = Field(None, description="up to 4 strings; the text ends before the first")
    stream: bool = False
    n: Literal[1] = 1
    user: str | None = None


def create_app(served, settings: ServeSettings, worker: GenerationWorker | None = None, on_failure=None):
    """The ASGI app. The worker (built here unless given) starts loading the model when the app starts."""
    energy, energy_note = nvml_energy_counter(served.backend)
    metrics = ServeMetrics(served.backend, served.name, served.precision, sparsetrt.__version__, energy)
    limits = BatchLimits(settings.max_batch, settings.max_batch_tokens, settings.prefill_chunk)
    worker = worker or GenerationWorker(served, settings.max_queue, limits=limits)
    worker.metrics, worker.on_failure = metrics, on_failure

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)

    app = FastAPI(title="sparsetrt", version=sparsetrt.__version__, lifespan=lifespan,
                  description="OpenAI-compatible completions over a 2:4-sparse model")
    app.state.worker, app.state.metrics = worker, metrics
    app.add_middleware(RequestGuard, settings=settings, metrics=metrics)

    def error_response(err: ServeError) -> JSONResponse:
        metrics.count_error(err.status, err.kind)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError):
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        return error_response(validation_error(err.errors()))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):  # a bug of ours: still the JSON error shape, logged
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(ServeError(500, f"internal error ({type(err).__name__}); see the server log",
                                         kind="server_error", code="internal_error"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):  # 404 path, 405 method: same JSON shape
        return error_response(ServeError(err.status_code, f"{request.method} {request.url.path}: {err.detail}",
                                         code="not_found" if err.status_code == 404 else "bad_route",
                                         headers=dict(err.headers or {})))

    @app.get("/health")
    async def health():
        body = {"status": worker.state, **served.describe(),
                "max_tokens_limit": settings.max_tokens_limit, "queued": worker.queued(),
                "max_queue": settings.max_queue, "batch": worker.load(), "energy": energy_note}
        if worker.failure:
            body["error"] = worker.failure
        return JSONResponse(body, status_code=200 if worker.state == "ready" else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.name, "object": "model", "owned_by": "sparsetrt"}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        job = make_job(body, served, settings, worker, asyncio.get_running_loop())
        worker.submit(job)
        first = await next_event(job, request, settings)
        if first[0] == "error":
            raise first[1]
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.name}
        if body.stream:
            return StreamingResponse(stream_events(job, first, meta, request, settings, metrics),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        parts, event = [], first
        while event[0] == "text":
            parts.append(event[1])
            event = await next_event(job, request, settings)
        if event[0] == "error":
            raise event[1]
        return completion_body(meta, "".join(parts), event[1])

    return app


def make_job(body: CompletionRequest, served, settings: ServeSettings, worker, loop) -> Job:
    """The checks the schema cannot make (they depend on the model and the server's limits), then the job."""
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    for param, texts in (("prompt", prompts), ("stop", stops), ("user", [body.user or ""]),
                         ("model", [body.model or ""])):
        if lone := next((m.group() for t in texts if (m := LONE_SURROGATE.search(t))), None):
            raise ServeError(400, f"{param} holds a lone UTF-16 surrogate (U+{ord(lone):04X}), which is not Unicode "
                                  "text; send valid UTF-8", param=param, code="invalid_text")
    if body.model is not None and body.model != served.name:
        raise ServeError(404, f"model '{body.model}' is not served here; this server serves '{served.name}'",
                         code="model_not_found", param="model")
    if body.max_tokens > settings.max_tokens_limit:
        raise ServeError(400, f"max_tokens {body.max_tokens} is over this server's limit of "
                              f"{settings.max_tokens_limit}", param="max_tokens", code="max_tokens_too_large")
    if len(prompts) != 1:
        raise ServeError(400, f"one prompt per request, got a list of {len(prompts)}", param="prompt")
    if len(stops) > 4 or any(not s for s in stops):
        raise ServeError(400, "stop takes at most 4 non-empty strings", param="stop")
    if not prompts[0]:
        raise ServeError(400, "prompt is empty", param="prompt", code="empty_prompt")
    if worker.request_tokenizer is None:
        raise ServeError(503, "the model is still loading; retry when /health says ready", "server_unavailable",
                         code=worker.state, headers={"Retry-After": "1"})
    ids = worker.request_tokenizer(prompts[0])["input_ids"]
    if not ids:
        raise ServeError(400, "prompt has no tokens", param="prompt", code="empty_prompt")
    if len(ids) > served.max_prompt_tokens:
        raise ServeError(400, f"prompt is {len(ids)} tokens; this model's profile accepts at most "
                              f"{served.max_prompt_tokens}", param="prompt", code="context_length_exceeded")
    if len(ids) + body.max_tokens > served.max_context_tokens:
        raise ServeError(400, f"prompt ({len(ids)} tokens) + max_tokens ({body.max_tokens}) is over the model's "
                              f"context of {served.max_context_tokens} tokens", param="max_tokens",
                         code="context_length_exceeded")
    if len(ids) + body.max_tokens > settings.max_batch_tokens:
        raise ServeError(400, f"prompt ({len(ids)} tokens) + max_tokens ({body.max_tokens}) is over this server's "
                              f"--max-batch-tokens of {settings.max_batch_tokens}", param="max_tokens",
                         code="batch_tokens_exceeded")
    sampling = Sampling(max_new_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                        seed=seed_for(body.seed))
    return Job(prompt_ids=list(ids), sampling=sampling, stop_texts=tuple(stops),
               deadline=time.monotonic() + settings.request_timeout_s, loop=loop)


async def next_event(job: Job, request, settings: ServeSettings):
    """The job's next event. Checks twice a second whether the client left (then the job is cancelled, so the
    model thread moves on) and gives up well after the deadline in case the model thread stopped answering."""
    give_up = job.deadline + max(30.0, settings.request_timeout_s)
    while True:
        try:
            return await asyncio.wait_for(job.events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancelled.set()
                raise ServeError(499, "client closed the request", "client_closed") from None
            if time.monotonic() > give_up:
                job.cancelled.set()
                raise ServeError(504, "the model thread did not answer in time", "timeout") from None


async def stream_events(job: Job, first, meta: dict, request, settings: ServeSettings, metrics):
    """Server-sent events in OpenAI's format: one chunk per text delta, a last chunk with finish_reason and
    usage, then [DONE]. An error after the stream started becomes an error event (the status is already 200)."""
    event = first
    try:
        while event[0] == "text":
            yield sse(chunk(meta, event[1], None))
            event = await next_event(job, request, settings)
        if event[0] == "error":
            metrics.count_error(event[1].status, event[1].kind)
            yield sse(event[1].body())
        else:
            yield sse({**chunk(meta, "", event[1].finish_reason), "usage": usage(event[1])})
        yield "data: [DONE]\n\n"
    except ServeError as err:  # client left, or the model thread stalled
        metrics.count_error(err.status, err.kind)
    finally:
        job.cancelled.set()  # the client disconnected mid-stream: free the model thread for the next job


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def chunk(meta: dict, text: str, finish_reason: str | None) -> dict:
    return {**meta, "object": "text_completion",
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}]}


def usage(done) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def completion_body(meta: dict, text: str, done) -> dict:
    return {**chunk(meta, text, done.finish_reason), "usage": usage(done)}


def validation_error(errors) -> ServeError:
    """FastAPI's validation errors (malformed JSON, wrong types, out-of-range values, unknown fields) as one 400
    naming the first offending field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return ServeError(400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                          code="invalid_json")
    if not where and first.get("type") in ("model_attributes_type", "dict_type", "missing"):
        return ServeError(400, "request body must be a JSON object (send Content-Type: application/json)",
                          code="invalid_body")
    if first.get("type") == "extra_forbidden":
        return ServeError(400, f"unknown field '{where[-1]}'; this server takes " + ", ".join(
            CompletionRequest.model_fields), param=where[-1], code="unknown_field")
    field = ".".join(where) or "body"
    return ServeError(400, f"{field}: {first['msg']}" + ("" if len(errors) < 2 else f" (and {len(errors) - 1} more)"),
                      param=field, code=first.get("type"))


class RequestGuard:
    """Pure ASGI middleware (so streaming stays untouched): refuses bodies over the limit with 413 before the app
    reads them, counts every completions response by status code, and writes one JSON log line per request."""

    def __init__(self, app, settings: ServeSettings, metrics):
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.monotonic()
        status = {"code": 500}
        request_id = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")[:64] or \
            uuid.uuid4().hex[:16]

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        completions = scope["path"] == "/v1/completions"
        try:
            if scope["method"] == "POST":
                body = await self._read_body(receive)
                if body is None:
                    await self._too_large(send_counted)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_counted)
        finally:
            seconds = time.monotonic() - start
            if completions:
                self.metrics.count_response(status["code"])
                self.metrics.duration.observe(seconds)
            log.info("request", extra={"event": "request", "method": scope["method"], "path": scope["path"],
                                       "status": status["code"], "duration_ms": round(seconds * 1000, 2),
                                       "request_id": request_id,
                                       "client": (scope.get("client") or ("", 0))[0]})

    async def _read_body(self, receive) -> bytes | None:
        """The whole body, or None once it passes the limit (declared or actual)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks)
            size += len(message.get("body", b""))
            if size > self.settings.max_body_bytes:
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _too_large(self, send) -> None:
        err = ServeError(413, f"request body is over this server's limit of {self.settings.max_body_bytes} bytes",
                         code="body_too_large")
        self.metrics.count_error(413, err.kind)
        payload = json.dumps(err.body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def _replay(body: bytes, receive):
    """A receive() that hands the app the body read already, then passes later messages (disconnects) through."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus whatever `extra=` the call passed."""

    _standard = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        entry.update({k: v for k, v in vars(record).items() if k not in self._standard})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def log_config(level: str) -> dict:
    """logging.config dict for our logger and uvicorn's: JSON lines on stderr; uvicorn's access log is off (the
    RequestGuard line carries more)."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    loggers = {name: {"handlers": ["json"], "level": level.upper(), "propagate": False}
               for name in ("sparsetrt", "uvicorn", "uvicorn.error")}
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"json": {"()": JsonLogFormatter}}, "handlers": {"json": handler}, "loggers": loggers}


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a busy port or an address this machine does not have
    is refused at once, with the option to change."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise SparsetrtError(f"--host {host!r} is not an address this machine can bind ({exc}); use 127.0.0.1, "
                             "0.0.0.0 or one of its own addresses") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        what = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror or exc})"
        raise SparsetrtError(f"--host {host} --port {port}: the address {what}; choose another --port (or stop "
                             "what holds it)") from None
    sock.set_inheritable(True)
    return sock


def serve(served, settings: ServeSettings, listening: socket.socket | None = None) -> int:
    """Run until SIGTERM/SIGINT on `listening` (bound here when not given); 0 after a graceful shutdown, 1 when
    the model failed to load."""
    listening = listening or bind(settings.host, settings.port)
    state = {"failed": False}

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.worker.drain()
            log.info("shutting down: finishing in-flight requests", extra={"event": "draining", "signal": sig,
                                                                           "queued": app.state.worker.queued()})
            super().handle_exit(sig, frame)

    def failed():
        state["failed"] = True
        server.should_exit = True

    app = create_app(served, settings, on_failure=failed)
    graceful = settings.graceful_timeout_s if settings.graceful_timeout_s is not None else settings.request_timeout_s
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=log_config(settings.log_level),
                            access_log=False, timeout_graceful_shutdown=graceful, lifespan="on")
    server = Server(config)
    # uvicorn re-raises the signal it caught after shutting down (so the default action would kill us with 143);
    # with these no-op handlers in place as the "previous" ones, a graceful SIGTERM ends with exit code 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[listening])
    if state["failed"] or not server.started:
        return 1
    log.info("stopped", extra={"event": "stopped"})
    return 0
