#!/bin/sh
# Entrypoint of the serving images (Dockerfile.runtime, Dockerfile.cpu).
#   sparsetrt-entrypoint [serve] [extra `sparsetrt serve` flags]   serve until SIGTERM (the default)
#   sparsetrt-entrypoint health                                    exit 0 when /health says ready (HEALTHCHECK)
#   sparsetrt-entrypoint COMMAND ...                               run anything else (a shell, `sparsetrt ...`)
# Settings come from the environment so the same image serves any mounted model:
#   SPARSETRT_MODEL (default /models), SPARSETRT_BACKEND (onnxruntime), SPARSETRT_PRECISION (auto),
#   SPARSETRT_HOST (0.0.0.0: a container's loopback is unreachable from outside), SPARSETRT_PORT (8000).
set -eu

: "${SPARSETRT_MODEL:=/models}"
: "${SPARSETRT_BACKEND:=onnxruntime}"
: "${SPARSETRT_PRECISION:=auto}"
: "${SPARSETRT_HOST:=0.0.0.0}"
: "${SPARSETRT_PORT:=8000}"
: "${SPARSETRT_PYTHON:=python3}"

command="serve"
if [ "$#" -gt 0 ]; then
    command="$1"
    shift
fi

case "$command" in
    serve)
        # exec: the server becomes this process (PID 1 in a container), so `docker stop`'s SIGTERM reaches it
        # directly and it drains in-flight requests before exiting 0.
        exec sparsetrt serve --model "$SPARSETRT_MODEL" --backend "$SPARSETRT_BACKEND" \
            --precision "$SPARSETRT_PRECISION" --host "$SPARSETRT_HOST" --port "$SPARSETRT_PORT" "$@"
        ;;
    health)
        # No curl in the slim images: the standard library asks /health (503 while loading or draining).
        exec "$SPARSETRT_PYTHON" -c 'import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=4)
except Exception as exc:
    sys.exit(f"unhealthy: {exc}")' "http://127.0.0.1:${SPARSETRT_PORT}/health"
        ;;
    *)
        exec "$command" "$@"
        ;;
esac
