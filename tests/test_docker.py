"""docker/ without building: every Dockerfile passes hadolint, every script shellcheck, the slim images' requirement
lists name declared, pinned dependencies, and the entrypoint itself serves, answers the HEALTHCHECK probe and exits
0 on SIGTERM outside a container. The images themselves are built and run in test_docker_images.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from serve_support import free_port, wait_until_ready

from sparsetrt.pipeline.config import tomllib

DOCKER = Path(__file__).resolve().parents[1] / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
BIN = Path(sys.executable).parent


def test_the_three_images_exist():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.build", "Dockerfile.runtime", "Dockerfile.cpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    proc = subprocess.run([str(BIN / "hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_is_not_a_rubber_stamp(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nWORKDIR app\n")
    proc = subprocess.run([str(BIN / "hadolint"), str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3007" in proc.stdout  # :latest is refused


@pytest.mark.parametrize("dockerfile", [p for p in DOCKERFILES if p.name != "Dockerfile.build"], ids=lambda p: p.name)
def test_serving_images_run_unprivileged_with_a_healthcheck(dockerfile):
    text = dockerfile.read_text()
    stages = re.split(r"^(?=FROM )", text, flags=re.M)[1:]
    # the serving stage: `AS runtime` where there is one (the runtime image adds a `baked` stage on top), else the last
    final = next((st for st in stages if st.splitlines()[0].endswith(" AS runtime")), stages[-1])
    assert re.search(r"^USER 10001$", final, re.M), "the serving stage must drop root"
    assert 'HEALTHCHECK' in final and '"sparsetrt-entrypoint", "health"' in final
    assert 'ENTRYPOINT ["sparsetrt-entrypoint"]' in final
    assert "pip" not in final.replace("PIP_", ""), "no build tools in the final stage"
    assert len(stages) >= 2, "multi-stage"


def test_base_images_are_pinned():
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        stage_names = set(re.findall(r"^FROM \S+ AS (\S+)", text, re.M))
        for line in text.splitlines():
            if line.startswith(("FROM ", "ARG CUDA_IMAGE", "ARG BASE")):
                image = line.split()[1].split("=")[-1]
                if image.startswith("${") or image in stage_names or image == "scratch":
                    continue  # the pinned ARG, an earlier stage of this file, or the empty image (no versions)
                assert re.search(r":\d[\w.-]*$", image), f"{dockerfile.name}: {line} is not pinned to a version tag"


def test_shellcheck_passes_on_every_script():
    scripts = sorted(DOCKER.glob("*.sh"))
    assert {p.name for p in scripts} >= {"entrypoint.sh", "install.sh", "wheelhouse.sh", "base.sh"}
    proc = subprocess.run([str(BIN / "shellcheck"), *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("requirements", sorted(DOCKER.glob("requirements-*.txt")), ids=lambda p: p.name)
def test_image_requirements_are_declared_pinned_dependencies(requirements):
    """Each slim image installs a subset of the package's own dependencies, at the versions of constraints.txt."""
    root = DOCKER.parent
    declared = {canonical(spec) for spec in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]}
    pinned = {canonical(line) for line in (root / "constraints.txt").read_text().splitlines() if "==" in line}
    names = [canonical(line) for line in requirements.read_text().splitlines() if line.strip() and line[0] != "#"]
    assert names and set(names) <= pinned, set(names) - pinned
    # transformers brings the tokenizer; the rest are the package's own dependencies (tensorrt-rtx-cu12: the RTX one)
    assert set(names) <= declared, set(names) - declared
    assert not {"torch", "nvidia-modelopt", "accelerate"} & set(names)


def canonical(spec: str) -> str:
    return re.split(r"[<>=!~;\[ ]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def entrypoint_env(**overrides) -> dict:
    # PATH first holds this venv, as /opt/venv/bin is first in the images.
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "SPARSETRT_PYTHON": sys.executable,
            **overrides}


def test_entrypoint_serves_answers_health_and_exits_0_on_sigterm(tiny_checkpoint):
    port = free_port()
    env = entrypoint_env(SPARSETRT_MODEL=str(tiny_checkpoint), SPARSETRT_BACKEND="pytorch",
                         SPARSETRT_HOST="127.0.0.1", SPARSETRT_PORT=str(port))
    probe = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), "health"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "unhealthy" in probe.stderr  # nothing listens yet
    server = subprocess.Popen(["sh", str(DOCKER / "entrypoint.sh"), "serve", "--max-queue", "3"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health = wait_until_ready(f"http://127.0.0.1:{port}", timeout_s=120)
        assert health["backend"] == "pytorch" and health["max_queue"] == 3  # extra flags reach `sparsetrt serve`
        probe = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), "health"], env=env, capture_output=True)
        assert probe.returncode == 0
        server.send_signal(signal.SIGTERM)  # exec'd: the signal reaches the server itself
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()


def test_entrypoint_reports_a_missing_model_and_fails(tmp_path):
    env = entrypoint_env(SPARSETRT_MODEL=str(tmp_path / "nothing"), SPARSETRT_PORT=str(free_port()))
    proc = subprocess.run(["sh", str(DOCKER / "entrypoint.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_entrypoint_runs_other_commands():
    proc = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), "sparsetrt", "serve", "--help"], env=entrypoint_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--max-queue" in proc.stdout


def test_serving_an_onnx_file_and_building_an_engine_import_no_torch():
    """What the slim images run imports none of what they leave out (the images themselves check it by running;
    this catches an eager import on any machine, in a second)."""
    modules = ["sparsetrt.cli.serve", "sparsetrt.cli.runtime", "sparsetrt.cli.build", "sparsetrt.runtime.serve.app",
               "sparsetrt.runtime.serve.served_model", "sparsetrt.runtime.backends.onnxrt", "sparsetrt.models",
               "sparsetrt.build.engine", "sparsetrt.build.rtx"]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(','.join(m for m in ('torch', 'modelopt', 'tensorrt_rtx', 'transformers.modeling_utils') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"imported eagerly: {proc.stdout.strip()}"
