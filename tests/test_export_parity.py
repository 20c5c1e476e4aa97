"""Export -> ONNX verification -> parity on a tiny model: the same code path the demo runs."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.verify import load_manifest, verify_onnx
from sparsetrt.runtime.parity.compare import run_parity, tolerances_for
from sparsetrt.runtime.settings import ParitySettings, parse_tolerance_overrides


@pytest.fixture(scope="module")
def exported(exported_tiny):
    return exported_tiny


def test_export_writes_both_precisions_with_external_data(exported):
    out, manifest = exported
    assert set(manifest["files"]) == {"fp32", "fp16"}
    for info in manifest["files"].values():
        assert (out / info["onnx"]).is_file() and (out / (info["onnx"] + ".data")).is_file()
        assert info["sparsity_verification"]["ok"] and info["sparsity_verification"]["checked"] == 14
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["input_ids"] == ["batch", "sequence"] and dims["position_ids"] == ["batch", "sequence"]
    assert dims["attention_mask"] == ["batch", "total_sequence"]
    past = {name: d for name, d in dims.items() if name.startswith("past_key_values.")}
    assert len(past) == 2 * 2 and all(d == ["batch", 2, "past_sequence", 16] for d in past.values())
    outputs = [o.name for o in model.graph.output]
    assert outputs[0] == "logits" and outputs[1:] == [f"present.{i}.{k}" for i in range(2) for k in ("key", "value")]
    assert manifest["graph"]["kv_cache"] and manifest["graph"]["layers"] == 2
    fp16 = onnx.load(str(out / "model.fp16.onnx"), load_external_data=False)
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_onnx_verifier_catches_a_broken_initializer(exported, pruned_tiny, tmp_path):
    out, _ = exported
    manifest = load_manifest(pruned_tiny)
    model = onnx.load(str(out / "model.onnx"))
    # Break the weight that carries down_proj of layer 1: find it by content, then fill a group.
    target = [n for n in manifest["modules"] if n.endswith("layers.1.mlp.down_proj")][0]
    result = verify_onnx(out / "model.onnx", manifest, pruned_tiny)
    assert result.ok
    from sparsetrt.prune.verify import iter_checkpoint_weights

    reference = dict(iter_checkpoint_weights(pruned_tiny, [target]))[target]
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.shape == reference.T.shape and np.array_equal(array, reference.T):
            array = array.copy()
            array[:4, 0] = 1.0  # reduction axis 0 in this (in, out) layout
            init.CopyFrom(numpy_helper.from_array(array, init.name))
            break
    else:
        pytest.fail("down_proj weight not found")
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken), save_as_external_data=True, location="broken.onnx.data")
    result = verify_onnx(broken, manifest, pruned_tiny)
    assert not result.ok
    assert any(target in f for f in result.failures)


def test_parity_reports_and_passes_fp32(exported, pruned_tiny, calib_file, tmp_path):
    out, _ = exported
    report = run_parity(pruned_tiny, out, tmp_path / "parity", ParitySettings(corpus=str(calib_file), windows=2,
                                                                            seq_len=64))
    fp32 = next(c for c in report["candidates"] if c["precision"] == "fp32")
    assert fp32["passed"], fp32["checks"]
    assert fp32["metrics"]["max_abs_error"] <= 1e-3 and fp32["metrics"]["top1_agreement"] >= 0.999
    fp16 = next(c for c in report["candidates"] if c["precision"] == "fp16")
    assert 0 < fp16["metrics"]["max_abs_error"] < 1.0  # fp16 really ran in half precision
    files = {p.name for p in (tmp_path / "parity").iterdir()}
    assert {"parity.json", "parity.html", "parity.junit.xml"} <= files
    junit = (tmp_path / "parity" / "parity.junit.xml").read_text()
    assert junit.count("<testcase") == sum(len(c["checks"]) for c in report["candidates"]) + 2
    assert "top1_agreement" in (tmp_path / "parity" / "parity.html").read_text()
    assert json.loads((tmp_path / "parity" / "parity.json").read_text())["passed"] == report["passed"]


def test_parity_fails_when_a_tolerance_is_broken(exported, pruned_tiny, calib_file, tmp_path):
    out, _ = exported
    report = run_parity(pruned_tiny, out, tmp_path / "parity",
                        ParitySettings(corpus=str(calib_file), windows=1, seq_len=32,
                                       tolerances=["fp32.max_abs_error=1e-12"]))
    assert not report["passed"]
    junit = (tmp_path / "parity" / "parity.junit.xml").read_text()
    assert 'failures="1"' in junit and "ToleranceExceeded" in junit


def test_tolerance_overrides():
    assert parse_tolerance_overrides(["fp16.max_abs_error=0.5"]) == {"fp16": {"max_abs_error": 0.5}}
    rules = tolerances_for("fp16", {"fp16": {"max_abs_error": 0.5, "top1_agreement": 0.9}})
    assert rules["max_abs_error"] == ("<=", 0.5) and rules["top1_agreement"] == (">=", 0.9)
    from conftest import settings_refusal

    from sparsetrt.runtime.settings import ParitySettings

    assert "--tol 'max_abs_error' is not PRECISION.METRIC=VALUE" in \
        settings_refusal(ParitySettings, tolerances=["max_abs_error"])
    assert "unknown parity metric 'speed'" in settings_refusal(ParitySettings, tolerances=["fp32.speed=1"])
    assert "finite" in settings_refusal(ParitySettings, tolerances=["fp32.max_abs_error=nan"])
    with pytest.raises(SparsetrtError, match="unknown parity metric"):
        tolerances_for("fp32", {"fp32": {"speed": 1.0}})


def test_metric_list_matches_what_the_accumulator_reports():
    import numpy as np

    from sparsetrt.runtime.parity.metrics import ParityAccumulator
    from sparsetrt.runtime.settings import METRICS

    acc = ParityAccumulator()
    logits = np.random.default_rng(0).standard_normal((1, 4, 16)).astype(np.float32)
    acc.update(logits, logits + 0.01, np.array([[1, 2, 3, 4]]))
    assert tuple(acc.result()) == METRICS
