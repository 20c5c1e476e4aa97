"""The serve room: `sparsetrt serve`, `sparsetrt loadtest`."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import model_validator

from sparsetrt.cli import Command
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.settings import (
    BACKENDS,
    POLICIES,
    SERVE_PRECISIONS,
    ControllerSettings,
    LoadSettings,
    ServeSettings,
)
from sparsetrt.settings import RemoteCode, Settings, named, option

SERVER_STACK = ("fastapi", "uvicorn", "prometheus_client")

app = lazy_import("sparsetrt.runtime.serve.app")
loadtest_client = lazy_import("sparsetrt.runtime.serve.loadtest")
router = lazy_import("sparsetrt.runtime.adaptive.router")
served_model = lazy_import("sparsetrt.runtime.serve.served_model")


class ServeCommand(Settings):
    model: str = option("smollm2-135m", "smollm2-135m, a checkpoint directory, an artifacts directory (make demo), "
                                        ".onnx or .engine", min_length=1)
    code: RemoteCode = option(RemoteCode, "model code")
    backend: Literal[BACKENDS] = option("onnxruntime", "which runner serves")
    precision: Literal[SERVE_PRECISIONS] = option("auto", "which file of an artifacts directory to serve (auto: the "
                                                          "ONNX Runtime target, else the fp32 ONNX; fp16 engine)")
    served_model_name: str | None = option(None, "the name clients send as `model` (default: from --model)",
                                           min_length=1)
    tokenizer: str | None = option(None, "checkpoint dir with the tokenizer, for an .onnx/.engine outside an "
                                         "artifacts directory", min_length=1)
    max_prompt_tokens: int | None = option(None, "longest prompt (default: the engine's profile for TensorRT, else "
                                                 "2048)", ge=1, le=1 << 24)
    server: ServeSettings = option(ServeSettings, "server")
    adaptive: Literal[POLICIES] | None = option(None, "route each request to a variant of --variants chosen by this "
                                                      "controller; --model then names only what clients send",
                                                metavar="POLICY")
    variants: str = option("artifacts/variants", "the variant set (variants.json or its folder, from `sparsetrt "
                                                 "variants`)", min_length=1)
    controller_state: str | None = option(None, "JSON state file, loaded at start and saved after every audited "
                                                "request (default: VARIANTS/controller-POLICY.json)", min_length=1)
    controller: ControllerSettings = option(ControllerSettings, "adaptive routing")

    @model_validator(mode="after")
    def static_needs_a_variant(self) -> "ServeCommand":
        if self.adaptive == "static" and not self.controller.static_arm:
            raise ValueError(f"{named('adaptive')} static serves one variant: name it with "
                             f"{named('controller.static_arm')}")
        return self


def serve(s: ServeCommand) -> int:
    # the address first: a busy port or a bad host is one line in a second, not after minutes of loading
    listening = app.bind(s.server.host, s.server.port)
    try:
        if s.adaptive:
            controller = s.controller.model_copy(update={"policy": s.adaptive})
            served = router.resolve_adaptive(s.variants, controller, name=s.served_model_name,
                                             state_path=s.controller_state, max_prompt_tokens=s.max_prompt_tokens)
        else:
            served = served_model.resolve_served_model(s.model, s.backend, s.precision, name=s.served_model_name,
                                                       max_prompt_tokens=s.max_prompt_tokens, tokenizer=s.tokenizer)
    except BaseException:
        listening.close()
        raise
    return app.serve(served, s.server, listening)


def check_serve(s: ServeCommand) -> list[str]:
    app.bind(s.server.host, s.server.port).close()
    return [f"  listens on {s.server.host}:{s.server.port} (checked: the address binds)"]


class LoadtestCommand(Settings):
    load: LoadSettings = option(LoadSettings, "the load")
    out: str | None = option(None, "write the records and summary to this JSON file", min_length=1)


def loadtest(s: LoadtestCommand) -> int:
    summary = loadtest_client.run_loadtest(s.load, s.out)["summary"]
    print(json.dumps(summary, indent=2))
    return 0 if loadtest_client.load_passed(summary) else 1


COMMANDS = [
    Command("serve", "OpenAI-compatible completions server (/v1/completions, /health, /metrics)", ServeCommand,
            serve, check_serve, needs=SERVER_STACK),
    Command("loadtest", "N concurrent clients against a running server; latency, throughput, errors",
            LoadtestCommand, loadtest, needs=("httpx",)),
]
