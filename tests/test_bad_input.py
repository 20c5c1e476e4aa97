"""Bad input as a new user sends it, each kept as a regression test: the exit code, one line that
names the problem, and nothing half-written. The older cases (corrupt checkpoints, bad patterns, calibration text,
foreign output directories, TOML keys and types) live in test_cli.py and test_config.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_llama

from sparsetrt.cli import main

EXE = Path(sys.executable).with_name("sparsetrt")


def run(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip()


def one_line(code: int, err: str, expected: str, exit_code: int = 2) -> None:
    assert code == exit_code, err
    assert len(err.splitlines()) == 1, err
    assert expected in err, err


def leftovers(out: Path) -> list[str]:
    """`out` itself and any temporary of ours beside it."""
    return sorted(p.name for p in out.parent.iterdir() if p.name == out.name or p.name.startswith(f".{out.name}."))


def prune_args(model, calib, out, *extra):
    return ["prune", "--model", model, "--calib", calib, "--calib-samples", 2, "--calib-seq-len", 32, "--out", out,
            "--no-progress", *extra]


def config_only(directory: Path, config: dict) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "model.safetensors").write_bytes(b"")
    return directory


# 1 ------------------------------------------------------------------------------------------------------------------
def test_an_artifacts_tree_holding_sparsetrts_own_runs_is_accepted(tmp_path):
    """`make test` leaves artifacts/ci (a whole run) before `make demo` writes artifacts/; an interrupted run leaves
    its finished stages without a run manifest. Neither is foreign; a file of the user's is."""
    from sparsetrt.errors import SparsetrtError
    from sparsetrt.pipeline.checks import check_artifacts_dir

    out = tmp_path / "artifacts"
    (out / "ci" / "pruned").mkdir(parents=True)
    (out / "ci" / "run.json").write_text(json.dumps({"stage": "run", "fingerprint": "x"}))
    (out / "ci" / "pruned" / "sparsity.json").write_text(json.dumps({"stage": "prune"}))
    (out / "ci" / "pruned" / "model.safetensors").write_bytes(b"weights")
    check_artifacts_dir(out, "run.json", "y", overwrite=False)
    (out / "pruned").mkdir()
    (out / "pruned" / "sparsity.json").write_text(json.dumps({"stage": "prune", "fingerprint": "z"}))
    check_artifacts_dir(out, "run.json", "y", overwrite=False)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SparsetrtError, match=r"did not write \(notes.txt\)"):
        check_artifacts_dir(out, "run.json", "y", overwrite=False)


# 4, 5 ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config,expected", [
    ({"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": 8},
     "mixture-of-experts model ('mixtral', 8 experts per layer)"),
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
     "'gpt2' model (GPT2LMHeadModel), a family sparsetrt does not support; supported families: cohere, gemma, gemma2"),
])
def test_unsupported_families_are_refused_before_any_work(capsys, calib_file, tmp_path, config, expected):
    model = config_only(tmp_path / "model", config)
    out = tmp_path / "out"
    one_line(*run(capsys, *prune_args(model, calib_file, out)), expected)
    assert leftovers(out) == []


# 6 ------------------------------------------------------------------------------------------------------------------
def test_verify_of_a_truncated_onnx_is_one_line(capsys, exported_tiny, pruned_tiny, tmp_path):
    out, _ = exported_tiny
    truncated = tmp_path / "model.onnx"
    data = (out / "model.onnx").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    one_line(*run(capsys, "verify", truncated, "--checkpoint", pruned_tiny), "is not a readable ONNX model")


# 7 ------------------------------------------------------------------------------------------------------------------
def test_an_output_that_cannot_be_replaced_is_refused_before_the_work(capsys, tiny_checkpoint, calib_file, tmp_path):
    out = tmp_path / "out"
    assert run(capsys, *prune_args(tiny_checkpoint, calib_file, out))[0] == 0
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is refused here (needs root on a filesystem with attributes)")
    try:
        code, err = run(capsys, *prune_args(tiny_checkpoint, calib_file, out, "--method", "wanda", "--overwrite"))
        one_line(code, err, "cannot be replaced")
        assert leftovers(out) == ["out"]
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)


def test_a_late_failure_to_replace_the_output_restores_it_and_cleans_up(capsys, tiny_checkpoint, calib_file, tmp_path,
                                                                       monkeypatch):
    import sparsetrt.artifacts as artifacts

    out = tmp_path / "out"
    assert run(capsys, *prune_args(tiny_checkpoint, calib_file, out))[0] == 0
    before = (out / "sparsity.json").read_text()
    real = os.replace

    def failing(src, dst):  # the finished result's rename is refused (a file system that went read-only, say)
        if ".tmp-" in Path(src).name and Path(dst).name == "out":
            raise PermissionError(1, "Operation not permitted")
        return real(src, dst)
    monkeypatch.setattr(artifacts.os, "replace", failing)
    code, err = run(capsys, *prune_args(tiny_checkpoint, calib_file, out, "--method", "wanda", "--overwrite"))
    one_line(code, err, "could not put the finished result at")
    assert leftovers(out) == ["out"] and (out / "sparsity.json").read_text() == before


# 8 ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig,exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_export_leaves_nothing(pruned_tiny, tmp_path, sig, exit_code):
    out = tmp_path / "onnx"
    # A shell that starts jobs in the background (CI's, `nohup`) leaves SIGINT ignored in its children; a user's
    # Ctrl-C reaches a process whose SIGINT is at its default, as here.
    proc = subprocess.Popen([str(EXE), "export", "--model", str(pruned_tiny), "--out", str(out)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert "exporting fp32 ONNX" in proc.stdout.readline()  # the work has started
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == exit_code, err
    assert "no partial output was kept" in err.strip().splitlines()[-1]
    assert leftovers(out) == []


def test_stale_temporaries_of_a_dead_run_are_removed(tmp_path):
    from sparsetrt.artifacts import remove_stale_temporaries, staged_dir

    out = tmp_path / "onnx"
    dead = tmp_path / ".onnx.tmp-999999999-abc"    # no such process
    mine = tmp_path / f".onnx.tmp-{os.getpid()}-def"  # a live run's
    other = tmp_path / ".onnx-notes"                 # not our naming
    for path in (dead, mine, other):
        path.mkdir()
    assert remove_stale_temporaries(out) == [dead]
    with staged_dir(out) as staged:
        (staged / "x").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name, "onnx"])


# 9 ------------------------------------------------------------------------------------------------------------------
def test_an_opset_the_exporter_cannot_write_is_refused(capsys, pruned_tiny, tmp_path):
    out = tmp_path / "onnx"
    one_line(*run(capsys, "export", "--model", pruned_tiny, "--out", out, "--opset", 7),
             "opset 7 cannot be written")
    assert leftovers(out) == []


# 10 -----------------------------------------------------------------------------------------------------------------
def test_a_lone_surrogate_gets_a_json_400(tiny_checkpoint):
    from serve_support import LiveServer

    from sparsetrt.runtime.serve.served_model import resolve_served_model

    with LiveServer(resolve_served_model(str(tiny_checkpoint), "pytorch")) as server:
        for body, param in (('{"prompt": "\\ud800 x", "max_tokens": 2}', "prompt"),
                            ('{"prompt": "x", "max_tokens": 2, "stop": ["\\udc00"]}', "stop")):
            response = server.client.post("/v1/completions", content=body,
                                          headers={"content-type": "application/json"})
            assert response.status_code == 400 and response.json()["error"]["param"] == param
            assert "lone UTF-16 surrogate" in response.json()["error"]["message"]
        assert server.client.get("/health").status_code == 200


# 13 -----------------------------------------------------------------------------------------------------------------
def test_lengths_past_the_models_positions_are_refused(capsys, calib_file, pruned_tiny, exported_tiny, tmp_path):
    short = make_tiny_llama(tmp_path / "short")  # 512 positions
    capsys.readouterr()  # transformers' save progress bar
    out = tmp_path / "out"
    one_line(*run(capsys, "prune", "--model", short, "--calib", calib_file, "--calib-seq-len", 1024, "--out", out),
             "a calibration window of 1024 tokens is longer than the model's 512 positions")
    assert leftovers(out) == []
    onnx_dir, _ = exported_tiny
    one_line(*run(capsys, "parity", "--model", pruned_tiny, "--onnx-dir", onnx_dir, "--out", out, "--seq-len", 1024),
             "lower --seq-len")
    assert leftovers(out) == []
    one_line(*run(capsys, "generate", "--backend", "onnxruntime", "--model", onnx_dir / "model.onnx", "--tokenizer",
                  pruned_tiny, "--prompt", "hello", "--max-new-tokens", 600), "more than the model's 512 positions")


# near-ties ------------------------------------------------------------------------------------------------------------
def test_a_top1_flip_at_a_near_tie_is_reported_not_counted():
    from sparsetrt.runtime.parity.metrics import ParityAccumulator

    ref = np.zeros((1, 2, 8), dtype=np.float32)
    ref[0, 0, 3], ref[0, 0, 5] = 2.0, 2.0 - 1e-6   # a near-tie: 3 over 5 by 1e-6
    ref[0, 1, 1] = 4.0                              # a clear winner
    cand = ref.copy()
    cand[0, 0, 5] += 2e-6                           # the candidate picks 5 at the tie
    ids = np.array([[3, 1]])
    strict, tolerant = ParityAccumulator(), ParityAccumulator(tie_margin=1e-3)
    strict.update(ref, cand, ids)
    tolerant.update(ref, cand, ids)
    assert strict.result()["top1_agreement"] == 0.5 and strict.result()["top1_near_ties"] == 0
    result = tolerant.result()
    assert result["top1_agreement"] == 1.0 and result["top1_near_ties"] == 1 and result["top1_near_tie_flips"] == 1


def test_tp_that_does_not_split_is_refused_before_any_work(capsys, pruned_tiny, exported_tiny, tmp_path):
    onnx_dir, _ = exported_tiny
    out = tmp_path / "q"
    one_line(*run(capsys, "quantize", "--model", pruned_tiny, "--onnx-dir", onnx_dir, "--precision", "int8",
                  "--tp", 3, "--out", out), "--tp must hold powers of two (1, 2, 4, ...), not 3")
    assert leftovers(out) == []


def test_a_copied_pruned_checkpoint_is_still_verified(capsys, pruned_tiny, tmp_path):
    """A pruned checkpoint copied elsewhere keeps its claims checkable (verify reads the files, not the path)."""
    copy = tmp_path / "copy"
    shutil.copytree(pruned_tiny, copy)
    code = main(["verify", str(copy)])
    assert code == 0 and "have their claimed pattern" in capsys.readouterr().out


def test_int8_gemm_outputs_need_int8(capsys, pruned_tiny, exported_tiny, tmp_path):
    onnx_dir, _ = exported_tiny
    out = tmp_path / "q"
    one_line(*run(capsys, "quantize", "--model", pruned_tiny, "--onnx-dir", onnx_dir, "--precision", "int4",
                  "--int8-gemm-outputs", "--out", out), "--int8-gemm-outputs quantizes INT8 GEMMs' outputs")
    assert leftovers(out) == []
