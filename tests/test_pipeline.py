import json

import pytest
from pydantic import ValidationError

from sparsetrt.errors import SparsetrtError
from sparsetrt.pipeline import run_pipeline
from sparsetrt.pipeline.config import PipelineConfig, load_config


def tiny_config(checkpoint, calib_file, out) -> PipelineConfig:
    config = PipelineConfig(out=str(out))
    config.model.source = str(checkpoint)
    config.calibration.corpus = str(calib_file)
    config.calibration.samples, config.calibration.seq_len = 4, 64
    config.export.precisions = ["fp32"]
    config.parity.corpus = str(calib_file)
    config.parity.windows, config.parity.seq_len = 1, 64
    return config


def test_pipeline_runs_reuses_and_refuses(tiny_checkpoint, calib_file, tmp_path, capsys):
    out = tmp_path / "artifacts"
    config = tiny_config(tiny_checkpoint, calib_file, out)
    summary = run_pipeline(config, progress=False)
    assert summary["passed"] and "sparsetrt run — PASS" in capsys.readouterr().out
    for path in ("pruned/sparsity.json", "onnx/model.onnx", "onnx/model.onnx.data", "parity/parity.json",
                 "parity/parity.html", "parity/parity.junit.xml", "run.json"):
        assert (out / path).is_file(), path
    stamp = (out / "onnx" / "model.onnx").stat().st_mtime_ns

    again = run_pipeline(config, progress=False)  # identical config: every stage is reused
    assert again["stages"]["export"]["fingerprint"] == summary["stages"]["export"]["fingerprint"]
    assert (out / "onnx" / "model.onnx").stat().st_mtime_ns == stamp

    other = tiny_config(tiny_checkpoint, calib_file, out)
    other.prune.method = "wanda"
    with pytest.raises(SparsetrtError, match="already holds a different pipeline run.*--overwrite"):
        run_pipeline(other, progress=False)
    assert run_pipeline(other, overwrite=True, progress=False)["passed"]
    assert json.loads((out / "pruned" / "sparsity.json").read_text())["method"] == "wanda"


def test_bad_quantize_settings_fail_before_any_stage(tiny_checkpoint, calib_file, tmp_path):
    pytest.importorskip("modelopt.torch.quantization")
    out = tmp_path / "artifacts"
    config = tiny_config(tiny_checkpoint, calib_file, out)
    config.quantize.precision = "int4"
    with pytest.raises(ValidationError, match="embeddings"):
        config.quantize.embeddings = "int2"  # refused as it is set
    with pytest.raises(SparsetrtError, match=r"add fp16 to \[export\] precisions"):  # INT4's graph is fp16
        run_pipeline(config, progress=False)
    assert not out.exists()


def test_quantized_run_shares_the_float_stages(tmp_path, calib_file, capsys):
    pytest.importorskip("modelopt.torch.quantization")
    from conftest import make_tiny_llama

    checkpoint = make_tiny_llama(tmp_path / "tiny", hidden=128, intermediate=256, heads=4, kv_heads=4)
    out = tmp_path / "artifacts"
    float_run = run_pipeline(tiny_config(checkpoint, calib_file, out), progress=False)
    stamp = (out / "onnx" / "model.onnx").stat().st_mtime_ns
    config = tiny_config(checkpoint, calib_file, out)
    config.quantize.precision, config.quantize.activations, config.quantize.block_size = "int4", "fp32", 64
    summary = run_pipeline(config, progress=False)
    screen = capsys.readouterr().out
    assert "W4A16" in screen and "trtllm tp=1" in screen
    assert summary["stages"]["export"]["fingerprint"] == float_run["stages"]["export"]["fingerprint"]
    assert (out / "onnx" / "model.onnx").stat().st_mtime_ns == stamp  # reused, not re-exported
    for path in ("run.json", "run-int4.json", "int4/model.int4.onnx", "int4/quantize.json", "int4/parity.junit.xml",
                 "int4/trtllm-tp1/config.json", "int4/trtllm-tp1/rank0.safetensors", "int4/trtllm-tp1/build.sh"):
        assert (out / path).is_file(), path
    with pytest.raises(ValidationError, match="precision"):
        config.quantize.precision = "int3"


def test_pipeline_ends_with_an_engine_and_checks_the_engine_section_first(tiny_checkpoint, calib_file, tmp_path,
                                                                          capsys):
    """[build] builds the decoder's engine as the last stage (TensorRT-RTX here, no GPU), reused on a rerun; an
    engine the run cannot make is refused before the pruning starts."""
    out = tmp_path / "artifacts"
    bad = tiny_config(tiny_checkpoint, calib_file, out)
    bad.build.precisions = ["int8"]
    with pytest.raises(SparsetrtError, match=r'needs \[quantize\] precision = "int8"'):
        run_pipeline(bad, progress=False)
    bad.build.precisions, bad.build.targets = ["fp32"], ["sm90"]
    with pytest.raises(SparsetrtError, match="need TensorRT 10/11"):
        run_pipeline(bad, progress=False)
    assert not out.exists()

    config = tiny_config(tiny_checkpoint, calib_file, out)
    config.build.precisions = ["fp32"]
    config.build.builder, config.build.max_input_len, config.build.max_output_len = "rtx", 64, 32
    summary = run_pipeline(config, progress=False)
    engine_manifest = json.loads((out / "engines" / "fp32" / "engine.json").read_text())
    assert summary["passed"] and "engine fp32" in summary["stages"]
    assert engine_manifest["flavour"] == "tensorrt-rtx" and (out / "engines" / "fp32" / "model.engine").is_file()
    assert "engine fp32" in capsys.readouterr().out
    stamp = (out / "engines" / "fp32" / "model.engine").stat().st_mtime_ns
    run_pipeline(config, progress=False)
    assert (out / "engines" / "fp32" / "model.engine").stat().st_mtime_ns == stamp  # reused


def test_a_shrink_stage_runs_before_prune_and_keeps_old_fingerprints(tiny_checkpoint, calib_file, tmp_path):
    from sparsetrt.pipeline.config import load_config

    plain = tiny_config(tiny_checkpoint, calib_file, tmp_path / "plain")
    assert "shrink" not in plain.to_dict()  # configs without [shrink] fingerprint as before
    config_file = tmp_path / "shrink.toml"
    config_file.write_text('[shrink]\nmlp = 0.5\nlayers = 1\n')
    config = tiny_config(tiny_checkpoint, calib_file, tmp_path / "shrunk-run")
    config.shrink = load_config(config_file).shrink
    assert (config.shrink.mlp, config.shrink.layers) == ("0.5", "1") and config.shrink.enabled()
    summary = run_pipeline(config, progress=False)
    assert summary["passed"] and list(summary["stages"])[:2] == ["shrink", "prune"]
    pruned = json.loads((tmp_path / "shrunk-run" / "pruned" / "config.json").read_text())
    assert (pruned["intermediate_size"], pruned["num_hidden_layers"]) == (64, 1)
    assert json.loads((tmp_path / "shrunk-run" / "shrunk" / "structure.json").read_text())["after"][
        "num_hidden_layers"] == 1


def test_stream_and_device_reach_the_stages_but_not_the_fingerprint(tiny_checkpoint, calib_file, tmp_path):
    from sparsetrt.artifacts import fingerprint
    from sparsetrt.pipeline.config import load_config

    config_file = tmp_path / "stream.toml"
    config_file.write_text('[prune]\nstream = true\ndevice = "auto"\n[export]\nstream = true\n')
    streamed = load_config(config_file)
    assert (streamed.prune.stream, streamed.prune.device, streamed.export.stream) == (True, "auto", True)
    (tmp_path / "plain.toml").write_text("[prune]\n")
    plain = load_config(tmp_path / "plain.toml")
    assert fingerprint(streamed.to_dict()) == fingerprint(plain.to_dict())
    config = tiny_config(tiny_checkpoint, calib_file, tmp_path / "run")
    config.prune.stream = config.export.stream = True
    summary = run_pipeline(config, progress=False)
    assert summary["passed"]
    sparsity = json.loads((tmp_path / "run" / "pruned" / "sparsity.json").read_text())
    assert sparsity["execution"] == {"device": "cpu", "streamed": True}
    assert (tmp_path / "run" / "pruned" / "model.safetensors.index.json").is_file()
    assert json.loads((tmp_path / "run" / "onnx" / "export.json").read_text())["execution"] == {"streamed": True}


def test_a_streamed_quantize_is_in_the_fingerprint_and_refused_up_front_where_it_cannot_run(tiny_checkpoint, calib_file,
                                                                                             tmp_path):
    from sparsetrt.artifacts import fingerprint

    plain = tiny_config(tiny_checkpoint, calib_file, tmp_path / "plain")
    assert "stream" not in plain.to_dict()["quantize"]  # configs without it keep their fingerprint
    streamed = tiny_config(tiny_checkpoint, calib_file, tmp_path / "plain")
    streamed.quantize.stream = True
    assert fingerprint(streamed.to_dict()) != fingerprint(plain.to_dict())  # it writes fewer artifacts
    streamed.quantize.precision = "int8"
    with pytest.raises(ValidationError, match="gptq"):
        streamed.quantize.gptq = "on"  # refused as it is set
    path = tmp_path / "c.toml"
    path.write_text('[quantize]\nprecision = "int8"\nstream = true\ngptq = "on"\n')
    with pytest.raises(SparsetrtError, match=r"\[quantize\] stream with \[quantize\] precision int8 and \[quantize\] gptq on"):
        load_config(path)
    assert not (tmp_path / "plain").exists()  # refused before any stage ran
