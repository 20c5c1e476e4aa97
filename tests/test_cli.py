"""The CLI's contract: bad input -> one clear line on stderr, exit code 2, and no partial artifact."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_llama

from sparsetrt.cli import main


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def prune_args(model, calib, out, *extra):
    return ["prune", "--model", model, "--calib", calib, "--calib-samples", 4, "--calib-seq-len", 32,
            "--out", out, "--no-progress", *extra]


def assert_one_line_error(code, err, pattern):
    import re

    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("sparsetrt: error: ")
    assert re.search(pattern, lines[0]), lines[0]


def assert_nothing_written(out: Path):
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers


def test_prune_end_to_end_and_rerun_rules(capsys, tiny_checkpoint, calib_file, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, *prune_args(tiny_checkpoint, calib_file, out, "--method", "wanda"))
    assert code == 0 and "zero fraction 0.5000" in stdout
    manifest = json.loads((out / "sparsity.json").read_text())
    assert manifest["method"] == "wanda" and len(manifest["modules"]) == 14
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    # The same run again is fine (replaced in place) ...
    assert run_cli(capsys, *prune_args(tiny_checkpoint, calib_file, out, "--method", "wanda"))[0] == 0
    # ... a different run into the same directory is refused, unless --overwrite.
    code, _, err = run_cli(capsys, *prune_args(tiny_checkpoint, calib_file, out, "--method", "magnitude"))
    assert_one_line_error(code, err, "already holds a different prune run.*--overwrite")
    assert json.loads((out / "sparsity.json").read_text())["method"] == "wanda"  # untouched
    code, _, _ = run_cli(capsys, *prune_args(tiny_checkpoint, calib_file, out, "--method", "magnitude", "--overwrite"))
    assert code == 0 and json.loads((out / "sparsity.json").read_text())["method"] == "magnitude"
    code, stdout, _ = run_cli(capsys, "verify", out)
    assert code == 0 and "14 modules" in stdout


def test_foreign_output_directory_is_refused(capsys, tiny_checkpoint, calib_file, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = run_cli(capsys, *prune_args(tiny_checkpoint, calib_file, out))
    assert_one_line_error(code, err, "files that sparsetrt did not write")
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.fixture()
def bad_models(tmp_path, tiny_checkpoint):
    models = {}
    corrupt_config = tmp_path / "corrupt-config"
    shutil.copytree(tiny_checkpoint, corrupt_config)
    (corrupt_config / "config.json").write_text("{not json")
    models["corrupt-config"] = corrupt_config
    corrupt_weights = tmp_path / "corrupt-weights"
    shutil.copytree(tiny_checkpoint, corrupt_weights)
    data = (corrupt_weights / "model.safetensors").read_bytes()
    (corrupt_weights / "model.safetensors").write_bytes(data[: len(data) // 3])
    models["corrupt-weights"] = corrupt_weights
    not_causal = tmp_path / "bert"
    not_causal.mkdir()
    (not_causal / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (not_causal / "model.safetensors").write_bytes(b"")
    models["not-causal"] = not_causal
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny_checkpoint / "config.json", no_weights)
    models["no-weights"] = no_weights
    return models


@pytest.mark.parametrize("which,pattern", [
    ("corrupt-config", r"config\.json is corrupt"),
    ("corrupt-weights", "could not load the weights"),
    ("not-causal", "'bert' model .* not a causal language model"),
    ("no-weights", "no weight files"),
])
def test_bad_checkpoints(capsys, bad_models, calib_file, tmp_path, which, pattern):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *prune_args(bad_models[which], calib_file, out))
    assert_one_line_error(code, err, pattern)
    assert_nothing_written(out)


def test_missing_model(capsys, calib_file, tmp_path):
    code, _, err = run_cli(capsys, *prune_args(tmp_path / "nowhere", calib_file, tmp_path / "out"))
    assert_one_line_error(code, err, "neither a checkpoint directory nor a known name")


def test_in_features_not_divisible(capsys, tmp_path, calib_file):
    model = make_tiny_llama(tmp_path / "odd", hidden=70, intermediate=140, heads=5, kv_heads=1)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *prune_args(model, calib_file, out))
    assert_one_line_error(code, err, r"in_features=70, not divisible by M=4.*--exclude")
    assert_nothing_written(out)


@pytest.mark.parametrize("extra,pattern", [
    (["--method", "obs"], "--method must be one of 'magnitude', 'wanda' or 'sparsegpt', not 'obs'"),
    (["--pattern", "3:2"], "0 < N < M"),
    (["--pattern", "dense"], "unknown pattern 'dense'"),
    (["--mask-selection", "best"], "--mask-selection must be one of 'joint' or 'independent'"),
])
def test_unknown_method_or_pattern(capsys, tiny_checkpoint, calib_file, tmp_path, extra, pattern):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *prune_args(tiny_checkpoint, calib_file, out, *extra))
    assert_one_line_error(code, err, pattern)
    assert_nothing_written(out)


def test_calibration_text_problems(capsys, tiny_checkpoint, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *prune_args(tiny_checkpoint, empty, out))
    assert_one_line_error(code, err, "is empty")
    short = tmp_path / "short.txt"
    short.write_text("only a few words")
    code, _, err = run_cli(capsys, *prune_args(tiny_checkpoint, short, out))
    assert_one_line_error(code, err, "fewer than one window of 32")
    bad_jsonl = tmp_path / "data.jsonl"
    bad_jsonl.write_text('{"text": "fine"}\n{"content": "no text field"}\n')
    code, _, err = run_cli(capsys, *prune_args(tiny_checkpoint, bad_jsonl, out))
    assert_one_line_error(code, err, "data.jsonl:2 has no string 'text' field")
    assert_nothing_written(out)


def test_jsonl_and_directory_calibration(capsys, tiny_checkpoint, calib_file, tmp_path):
    text = calib_file.read_text()
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in text.split("\n\n")))
    assert run_cli(capsys, *prune_args(tiny_checkpoint, jsonl, tmp_path / "a", "--method", "wanda"))[0] == 0
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(text)
    assert run_cli(capsys, *prune_args(tiny_checkpoint, folder, tmp_path / "b", "--method", "wanda"))[0] == 0
    assert "1 .txt files" in json.loads((tmp_path / "b" / "sparsity.json").read_text())["calibration"]["corpus"]


def test_unwritable_output(capsys, tiny_checkpoint, calib_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, *prune_args(tiny_checkpoint, calib_file, blocker / "out"))
    assert_one_line_error(code, err, "cannot write output directory")


def test_failure_mid_stage_leaves_no_artifact(capsys, tiny_checkpoint, calib_file, tmp_path, monkeypatch):
    import sparsetrt.prune.stage as stage
    from sparsetrt.prune.verify import VerifyResult

    monkeypatch.setattr(stage, "verify_checkpoint", lambda *a, **k: VerifyResult("x", 1, ["forced failure"]))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *prune_args(tiny_checkpoint, calib_file, out))
    assert_one_line_error(code, err, "forced failure")
    assert_nothing_written(out)


def test_verify_onnx_needs_checkpoint(capsys, tmp_path):
    code, _, err = run_cli(capsys, "verify", tmp_path / "model.onnx")
    assert_one_line_error(code, err, "needs --checkpoint")


def test_console_script_reports_errors(tmp_path):
    exe = Path(sys.executable).with_name("sparsetrt")
    proc = subprocess.run([str(exe), "prune", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("sparsetrt: error: model")


def test_hub_id_offline_is_a_clear_error(capsys, calib_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *prune_args("some-org/some-model", calib_file, tmp_path / "out"))
    assert_one_line_error(code, err, "hub could not provide it.*pass a local checkpoint directory")


def custom_code_checkpoint(tiny_checkpoint, directory: Path) -> Path:
    """tiny_checkpoint as a checkpoint that ships its own model class (config.json's auto_map)."""
    shutil.copytree(tiny_checkpoint, directory)
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "modeling_custom.py").write_text(
        "from transformers import LlamaForCausalLM\n\n\nclass CustomForCausalLM(LlamaForCausalLM):\n    pass\n")
    return directory


def test_remote_code_is_one_decision_every_command_takes(capsys, tiny_checkpoint, calib_file, tmp_path):
    """A checkpoint with its own code: every command that runs a model refuses it with the same line, before any
    work, and every one of them takes it with --trust-remote-code (the pruned checkpoint keeps the code)."""
    custom = custom_code_checkpoint(tiny_checkpoint, tmp_path / "custom")
    pruned, onnx = tmp_path / "pruned", tmp_path / "onnx"
    calib = ["--calib", calib_file, "--calib-samples", 4, "--calib-seq-len", 32]
    commands = {
        "prune": prune_args(custom, calib_file, pruned, "--method", "magnitude"),
        "export": ["export", "--model", pruned, "--out", onnx, "--precision", "fp32"],
        "parity": ["parity", "--model", pruned, "--onnx-dir", onnx, "--corpus", calib_file, "--windows", 2,
                   "--seq-len", 32, "--generate-tokens", 4, "--out", tmp_path / "parity"],
        "quantize": ["quantize", "--model", pruned, "--onnx-dir", onnx, "--precision", "int8", *calib,
                     "--no-progress", "--out", tmp_path / "int8"],
        "generate": ["generate", "--model", pruned, "--prompt", "The", "--max-new-tokens", 3],
        "shrink": ["shrink", "--model", pruned, "--mlp", 0.5, *calib, "--no-progress", "--out", tmp_path / "shrunk"],
        "distill": ["distill", "--teacher", custom, "--student", pruned, "--data", calib_file, "--steps", 1,
                    "--no-progress", "--out", tmp_path / "distilled"],
    }
    for name, args in commands.items():
        before = sorted(tmp_path.iterdir())
        code, _, err = run_cli(capsys, *args)
        assert_one_line_error(code, err, "needs custom code from the checkpoint; pass --trust-remote-code")
        assert sorted(tmp_path.iterdir()) == before, name
        code, _, err = run_cli(capsys, *args, "--trust-remote-code")
        assert code == 0, (name, err)
    assert (pruned / "modeling_custom.py").is_file() and "auto_map" in json.loads((pruned / "config.json").read_text())


def test_quantize_refusals_are_one_line_and_leave_nothing(capsys, pruned_tiny, tmp_path):
    out = tmp_path / "q"
    code, _, err = run_cli(capsys, "quantize", "--model", str(pruned_tiny), "--onnx-dir", str(tmp_path / "none"),
                           "--precision", "int8", "--out", str(out))
    assert code == 2 and "has no export.json" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "quantize", "--model", str(pruned_tiny), "--onnx-dir", str(tmp_path),
                           "--precision", "int4", "--awq", "--gptq", "on", "--out", str(out))
    assert code == 2 and "--gptq off with --awq" in err
    assert not out.exists()


def test_generate_same_tokens_on_pytorch_and_onnxruntime(capsys, pruned_tiny, exported_tiny):
    out, _ = exported_tiny
    results = []
    for backend, model in (("pytorch", pruned_tiny), ("onnxruntime", out / "model.onnx")):
        code, stdout, err = run_cli(capsys, "generate", "--backend", backend, "--model", model, "--tokenizer",
                                    pruned_tiny, "--prompt", "def foo(x):", "--prompt", "The", "--max-new-tokens", 6,
                                    "--json")
        assert code == 0, err
        results.append(json.loads(stdout))
    assert [o["tokens"] for o in results[0]["outputs"]] == [o["tokens"] for o in results[1]["outputs"]]
    assert results[1]["backend"] == "onnxruntime" and results[1]["ttft_ms"] > 0
    code, _, err = run_cli(capsys, "generate", "--model", pruned_tiny)
    assert_one_line_error(code, err, "at least one --prompt")
    code, _, err = run_cli(capsys, "generate", "--backend", "onnxruntime", "--model", out / "model.onnx",
                           "--prompt", "x")
    assert_one_line_error(code, err, "cannot find a tokenizer")


def test_engine_prints_trtexec_and_refuses_without_tensorrt(capsys, exported_tiny, tmp_path):
    from sparsetrt.build import tensorrt_status

    out, _ = exported_tiny
    code, stdout, _ = run_cli(capsys, "build", out / "model.fp16.onnx", "--out", tmp_path / "e", "--print-trtexec")
    assert code == 0 and "trtexec --onnx=" in stdout and "--sparsity=enable" in stdout
    assert not (tmp_path / "e").exists()
    if tensorrt_status()[0]:
        pytest.skip("TensorRT is available here")
    code, _, err = run_cli(capsys, "engine", out / "model.onnx", "--out", tmp_path / "e", "--builder", "tensorrt")
    assert_one_line_error(code, err, "TensorRT is not importable")
    assert_nothing_written(tmp_path / "e")


def test_prune_schedule_flags_and_refusals(capsys, tiny_checkpoint, calib_file, tmp_path):
    out = tmp_path / "sched"
    code, stdout, _ = run_cli(capsys, *prune_args(tiny_checkpoint, calib_file, out, "--pattern", "0.6",
                                                  "--schedule", "scheduled", "--levels", "3", "--range", "0.5,0.7"))
    assert code == 0 and "scheduled" in stdout
    schedule = json.loads((out / "sparsity.json").read_text())["schedule"]
    assert schedule["range"] == [0.5, 0.7] and schedule["range_source"] == "user" and schedule["k"] == 3
    code, _, err = run_cli(capsys, *prune_args(tiny_checkpoint, calib_file, tmp_path / "x", "--pattern", "0.7",
                                               "--schedule", "scheduled", "--range", "0.75,0.8"))
    assert_one_line_error(code, err, r"cannot be reached inside --range \[0.75, 0.8\].*widen the range")
    assert_nothing_written(tmp_path / "x")
    code, _, err = run_cli(capsys, *prune_args(tiny_checkpoint, calib_file, tmp_path / "y", "--schedule", "owl"))
    assert_one_line_error(code, err, "unstructured:RATIO")


def test_distill_cli_writes_a_checkpoint_and_refuses_a_non_pruned_student(capsys, tiny_checkpoint, pruned_tiny,
                                                                          calib_file, tmp_path):
    out = tmp_path / "distilled"
    code, stdout, _ = run_cli(capsys, "distill", "--teacher", tiny_checkpoint, "--student", pruned_tiny, "--data",
                              calib_file, "--steps", 2, "--seq-len", 16, "--batch-size", 2, "--max-minutes", 5,
                              "--out", out, "--no-progress")
    assert code == 0 and "distilled 2 steps" in stdout and "zeros verified on 14 modules" in stdout
    code, _, err = run_cli(capsys, "distill", "--teacher", tiny_checkpoint, "--student", tiny_checkpoint,
                           "--out", tmp_path / "z", "--no-progress")
    assert_one_line_error(code, err, "no sparsity.json")
    assert_nothing_written(tmp_path / "z")


def test_parity_gate_fails_the_build_and_writes_junit_failures(capsys, exported_tiny, pruned_tiny, calib_file, tmp_path):
    """The CI contract of `make parity`: exit 0 and a clean JUnit file when every tolerance holds; exit 1 and a
    <failure> naming the broken tolerance when one does not (here a top-1 bar no model can reach)."""
    import xml.etree.ElementTree as ET

    onnx_dir, _ = exported_tiny
    base = ["parity", "--model", pruned_tiny, "--onnx-dir", onnx_dir, "--corpus", calib_file, "--windows", 1,
            "--seq-len", 32, "--generate-tokens", 4, "--engine", "none-given"]
    junit = tmp_path / "reports" / "junit" / "parity.xml"
    code, out, _ = run_cli(capsys, *base[:-2], "--out", tmp_path / "ok", "--junit", junit)
    assert code == 0 and f"JUnit: {junit}" in out
    suite = ET.parse(junit).getroot()
    assert int(suite.get("tests")) >= 4 and suite.get("failures") == "0"

    code, out, _ = run_cli(capsys, *base[:-2], "--out", tmp_path / "broken", "--junit", junit,
                           "--tol", "fp32.top1_agreement=1.01", "--tol", "fp16.top1_agreement=1.01")
    assert code == 1 and "FAIL (top1_agreement" in out
    suite = ET.parse(junit).getroot()
    failures = [case for case in suite.iter("testcase") if case.find("failure") is not None]
    assert int(suite.get("failures")) == len(failures) >= 1
    assert all(case.get("name") == "top1_agreement" for case in failures)
