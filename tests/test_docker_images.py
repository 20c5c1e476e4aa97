"""The images, built and run (`make docker-test`, part of `make test`): docker-cpu and docker-build's rtx target
built with podman from a Debian base made here and the wheelhouse (no registry, no index inside the build);
docker-cpu serves a tiny 2:4 model's ONNX Runtime target the same as the host does; docker-build builds a
TensorRT-RTX engine from a mounted ONNX. Sizes and start-up times go to reports/docker/images.json. Skips, with the
reason, where this machine cannot run containers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import httpx
import pytest
from container_support import BASE_TARBALL, ROOT, Podman, run_script, why_not_here
from serve_support import free_port, wait_until_ready

from sparsetrt.artifacts import file_sha256, write_json
from sparsetrt.cli import main
from sparsetrt.export.settings import ExportSettings
from sparsetrt.export.stage import export_checkpoint
from sparsetrt.models import cache_dir

CPU_IMAGE = "localhost/sparsetrt-cpu:test"
BUILD_IMAGE = "localhost/sparsetrt-build:test"
PROMPT, NEW_TOKENS = "The meaning of", 12
LEFT_OUT = ("torch", "tensorrt_rtx", "modelopt")  # what the slim serving image must not carry
MEASURED: dict = {}

pytestmark = pytest.mark.skipif(why_not_here() is not None, reason=why_not_here() or "")


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    base_cache = cache_dir() / "docker"
    if shutil.which("mmdebstrap") is None and not (base_cache / BASE_TARBALL).is_file():
        pytest.skip("mmdebstrap not installed and no cached base (`make docker-tools` installs it as root)")
    podman = Podman(tmp_path_factory.mktemp("podman"))
    try:
        probe = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
        if probe.returncode != 0:
            pytest.skip(f"podman cannot run here: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
        started = time.monotonic()
        podman.make_base(base_cache)
        MEASURED["base_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        run_script("wheelhouse.sh", sys.executable)
        MEASURED["wheelhouse_s"] = round(time.monotonic() - started, 1)
        yield podman
    finally:
        podman.clean_up()


@pytest.fixture(scope="module")
def tiny_tree(pruned_tiny, tmp_path_factory):
    """An artifacts tree as `make demo` writes it (pruned/ + onnx/ with the ONNX Runtime target), readable by the
    images' unprivileged user."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(pruned_tiny, root / "pruned")
    export_checkpoint(root / "pruned", root / "onnx", ExportSettings(precisions=["fp32"],
                                                                     targets=["tensorrt", "onnxruntime"]))
    subprocess.run(["chmod", "-R", "a+rwX", str(root)], check=True)
    return root


def host_greedy_text(tree, capsys) -> str:
    assert main(["generate", "--backend", "onnxruntime", "--model", str(tree / "onnx" / "model.ort.onnx"),
                 "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["outputs"][0]["text"]


def test_cpu_image_serves_what_the_host_generates_and_stops_on_sigterm(podman, tiny_tree, capsys):
    started = time.monotonic()
    podman.build("Dockerfile.cpu", CPU_IMAGE)
    MEASURED["cpu"] = {"build_s": round(time.monotonic() - started, 1), "bytes": podman.image_bytes(CPU_IMAGE)}
    carried = podman.importable(CPU_IMAGE, *LEFT_OUT)
    assert carried == [], f"the slim serving image carries {carried}"

    port = free_port()
    started = time.monotonic()
    podman("run", "--detach", "--name", "sparsetrt-cpu-test", "--publish", f"127.0.0.1:{port}:8000",
           "--volume", f"{tiny_tree}:/models:ro", CPU_IMAGE)
    url = f"http://127.0.0.1:{port}"
    health = wait_until_ready(url, timeout_s=120)
    MEASURED["cpu"]["ready_s"] = round(time.monotonic() - started, 1)
    assert health["backend"] == "onnxruntime" and health["made_for"] == "onnxruntime"
    assert podman("healthcheck", "run", "sparsetrt-cpu-test", check=False).returncode == 0  # the image's HEALTHCHECK

    answer = httpx.post(f"{url}/v1/completions", timeout=60,
                        json={"prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0}).json()
    assert answer["choices"][0]["text"] == host_greedy_text(tiny_tree, capsys)
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'sparsetrt_requests_total{backend="onnxruntime",code="200"' in metrics

    started = time.monotonic()
    podman("stop", "--time", "30", "sparsetrt-cpu-test")  # SIGTERM; SIGKILL (exit 137) after 30 s
    MEASURED["cpu"]["stop_s"] = round(time.monotonic() - started, 1)
    state = podman("inspect", "--format", "{{.State.ExitCode}}", "sparsetrt-cpu-test").stdout.strip()
    logs = podman("logs", "sparsetrt-cpu-test").stderr
    assert state == "0", logs[-2000:]
    podman("rm", "sparsetrt-cpu-test")


def test_build_image_builds_an_engine_from_a_mounted_onnx(podman, tiny_tree, tmp_path):
    started = time.monotonic()
    podman.build("Dockerfile.build", BUILD_IMAGE, target="rtx")
    MEASURED["build"] = {"build_s": round(time.monotonic() - started, 1), "bytes": podman.image_bytes(BUILD_IMAGE)}
    work = tmp_path / "work"
    shutil.copytree(tiny_tree / "onnx", work / "onnx")
    subprocess.run(["chmod", "-R", "a+rwX", str(work)], check=True)

    started = time.monotonic()
    podman("run", "--rm", "--volume", f"{work}:/work", BUILD_IMAGE, "build", "/work/onnx/model.onnx",
           "--out", "/work/engine", "--builder", "rtx", "--no-progress")
    MEASURED["build"]["engine_s"] = round(time.monotonic() - started, 1)
    manifest = json.loads((work / "engine" / "engine.json").read_text())
    assert manifest["flavour"] == "tensorrt-rtx" and manifest["gpu"] is None
    assert manifest["source_onnx"]["sha256"] == file_sha256(tiny_tree / "onnx" / "model.onnx")
    assert (work / "engine" / manifest["engine"]).stat().st_size > 0
    assert podman.importable(BUILD_IMAGE, "torch") == [], "the engine-build image carries torch"


def test_nothing_is_left_behind_but_the_cached_base(podman):
    podman.clean_up()
    assert not podman.root.exists() and podman.mounts() == []
    assert (cache_dir() / "docker" / BASE_TARBALL).is_file()
    (ROOT / "reports" / "docker").mkdir(parents=True, exist_ok=True)
    write_json(ROOT / "reports" / "docker" / "images.json", MEASURED)
