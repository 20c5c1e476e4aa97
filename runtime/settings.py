"""Names the runtime's options choose from, in a light module (the CLI builds its parsers from it without
importing torch, onnxruntime or a server stack)."""

from __future__ import annotations

BACKENDS = ("pytorch", "onnxruntime", "tensorrt")              # runners by name (runtime/backends)
SERVE_PRECISIONS = ("auto", "fp32", "fp16", "int8", "int4")  # which file of an artifacts tree `serve` runs
BANDITS = ("linucb", "thompson")
POLICIES = (*BANDITS, "threshold", "static")                # the adaptive router's controllers
