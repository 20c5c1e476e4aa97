"""`sparsetrt serve` as a child process: a free loopback port, start, wait until /health is ready, SIGTERM.

Used by the serve benchmark (a server in its own process, loaded from the bench's) and by the tests.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sparsetrt.errors import SparsetrtError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(serve_args: list[str], port: int, log_path: Path) -> subprocess.Popen:
    """`sparsetrt serve SERVE_ARGS --port PORT` (the console script beside this interpreter), output to log_path."""
    exe = Path(sys.executable).with_name("sparsetrt")
    log = open(log_path, "w")  # noqa: SIM115 (the child writes it until it exits)
    return subprocess.Popen([str(exe), "serve", *serve_args, "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)


def wait_until_ready(url: str, timeout_s: float = 600.0, process: subprocess.Popen | None = None,
                     log_path: Path | None = None) -> dict:
    """Poll /health until it answers 200; its body. Fails at once when the model failed to load or the server
    `process` exited, else after timeout_s."""
    where = f"; see {log_path}" if log_path else ""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SparsetrtError(f"the server exited with {process.returncode} before it was ready{where}")
        try:
            response = httpx.get(f"{url}/health", timeout=5)
            last = response.json()
            if response.status_code == 200:
                return last
            if last.get("status") == "failed":
                raise SparsetrtError(f"the model failed to load: {last.get('error')}{where}")
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SparsetrtError(f"the server at {url} was not ready after {timeout_s:.0f} s (last /health: {last}){where}")


def stop_server(process: subprocess.Popen, timeout_s: float = 120.0) -> int:
    """SIGTERM, then the exit code (a graceful shutdown is 0)."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
