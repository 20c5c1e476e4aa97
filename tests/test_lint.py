"""The TensorRT lint passes on well-formed Q/DQ graphs and fails, naming the rule, on each broken one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from sparsetrt.export.lint import lint_onnx
from sparsetrt.export.qmath import pack_int4

K, N = 256, 64


def int4_weight(name="w"):
    q = np.random.default_rng(0).integers(-8, 8, size=(K, N)).astype(np.int8)
    import torch

    return helper.make_tensor(name, T.INT4, [K, N], pack_int4(torch.from_numpy(q)), raw=True)


def save(tmp_path, nodes, inits, opset=21, name="m.onnx", extra_opsets=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT16, ["batch", K])],
                              [helper.make_tensor_value_info("y", T.FLOAT16, ["batch", N])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def w4a16(block=128, axis=0, scale_shape=None):
    scale = numpy_helper.from_array(np.full(scale_shape or (K // block, N), 0.01, np.float16), "ws")
    dq = helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], axis=axis, block_size=block, name="weight_dq")
    return [dq, helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")], [int4_weight(), scale]


def w8a8(dq_scale="xs"):
    inits = [numpy_helper.from_array(np.array(0.05, np.float16), "xs"),
             numpy_helper.from_array(np.array(0.07, np.float16), "xs2"),
             numpy_helper.from_array(np.array(0, np.int8), "xz"),
             numpy_helper.from_array(np.ones((K, N), np.int8), "w8"),
             numpy_helper.from_array(np.full(N, 0.01, np.float16), "w8s")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="act_q"),
             helper.make_node("DequantizeLinear", ["xq", dq_scale, "xz"], ["xd"], name="act_dq"),
             helper.make_node("DequantizeLinear", ["w8", "w8s"], ["wd"], axis=1, name="weight_dq"),
             helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm")]
    return nodes, inits


def rules(report):
    return {f.rule for f in report.errors}


def test_well_formed_w4a16_and_w8a8_pass(tmp_path):
    assert lint_onnx(save(tmp_path, *w4a16(), name="a.onnx")).ok
    report = lint_onnx(save(tmp_path, *w8a8(), name="b.onnx"))
    assert report.ok, report.text()
    assert report.stats["dynamic_inputs"] == {"x": {0: "batch"}}


def test_dequantized_weight_read_by_a_gather_is_flagged_as_undocumented(tmp_path):
    # a tied int8 table: DQ -> Transpose -> MatMul is the documented weight-only form; DQ -> Gather is not
    inits = [numpy_helper.from_array(np.ones((N, K), np.int8), "table"),
             numpy_helper.from_array(np.full(N, 0.01, np.float16), "table_s"),
             numpy_helper.from_array(np.array([0, 1], np.int64), "ids")]
    dq = helper.make_node("DequantizeLinear", ["table", "table_s"], ["table_d"], axis=0, name="table_dq")
    head = [dq, helper.make_node("Transpose", ["table_d"], ["table_t"], perm=[1, 0], name="t"),
            helper.make_node("MatMul", ["x", "table_t"], ["y"], name="lm_head")]
    report = lint_onnx(save(tmp_path, head, inits, name="head.onnx"))
    assert report.ok and not report.findings, report.text()
    lookup = helper.make_node("Gather", ["table_d", "ids"], ["emb"], name="embedding")
    report = lint_onnx(save(tmp_path, head + [lookup], inits, name="both.onnx"))
    assert report.ok  # a warning: TensorRT may run the DequantizeLinear standalone
    assert [f.rule for f in report.findings] == ["explicit.weight-reader"]
    assert "Gather 'embedding'" in report.text() and "--embeddings float" in report.text()


def test_matmulnbits_is_rejected_as_onnxruntime_only(tmp_path):
    node = helper.make_node("MatMulNBits", ["x", "w", "ws"], ["y"], domain="com.microsoft", K=K, N=N, bits=4,
                            block_size=128, name="nbits")
    inits = [numpy_helper.from_array(np.zeros((N, K // 128, 64), np.uint8), "w"),
             numpy_helper.from_array(np.ones((N * K // 128,), np.float16), "ws")]
    path = save(tmp_path, [node], inits, extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    report = lint_onnx(path)
    assert "ops.domain" in rules(report)  # (its packed uint8 weights are flagged too)
    assert "MatMulNBits" in report.text() and "ONNX Runtime" in report.text()


def test_per_tensor_int4_is_rejected(tmp_path):
    scale = numpy_helper.from_array(np.array(0.01, np.float16), "ws")
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], name="weight_dq"),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    report = lint_onnx(save(tmp_path, nodes, [int4_weight(), scale]))
    assert "schemes.int4-block" in rules(report)
    assert "requires per-block INT4 scales" in report.text()


def test_opset_too_old_for_blocked_dequantize(tmp_path):
    report = lint_onnx(save(tmp_path, *w4a16(), opset=19))
    assert "onnx.block-opset" in rules(report)
    assert "needs DequantizeLinear-21" in report.text()


def test_qdq_pair_with_different_scales_cannot_be_fused(tmp_path):
    report = lint_onnx(save(tmp_path, *w8a8(dq_scale="xs2")))
    assert rules(report) == {"explicit.qdq-pair"}
    assert "cannot fuse a Q/DQ pair whose scales differ" in report.text()


@pytest.mark.parametrize("block,scale_shape,message", [
    (32, (K // 32, N), "block size 32 is not one of"),
    (128, (3, N), "block scale has shape [3, 64], expected [2, 64]"),
])
def test_block_constraints(tmp_path, block, scale_shape, message):
    report = lint_onnx(save(tmp_path, *w4a16(block=block, scale_shape=scale_shape)))
    assert message in report.text()


def test_nonzero_zero_point_and_uint8_quantize(tmp_path):
    nodes, inits = w8a8()
    inits[2] = numpy_helper.from_array(np.array(3, np.int8), "xz")
    assert "ops.zero-point" in rules(lint_onnx(save(tmp_path, nodes, inits, name="zp.onnx")))
    nodes[0] = helper.make_node("QuantizeLinear", ["x", "xs"], ["xq"], name="act_q")
    assert "explicit.q-type" in rules(lint_onnx(save(tmp_path, nodes, inits, name="u8.onnx")))


def test_missing_or_truncated_external_data(tmp_path):
    nodes, inits = w4a16()
    model = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT16, ["b", K])],
                                                [helper.make_tensor_value_info("y", T.FLOAT16, ["b", N])], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 21)])
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    assert lint_onnx(path).ok
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    assert "truncated" in lint_onnx(path).text()
    data.unlink()
    assert "missing beside the model" in lint_onnx(path).text()


def test_unnamed_dynamic_input_and_unsupported_op(tmp_path):
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"], name="det")], "g",
                              [helper.make_tensor_value_info("x", T.FLOAT, [None, 4, 4])],
                              [helper.make_tensor_value_info("y", T.FLOAT, [None])])
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    assert rules(lint_onnx(path)) == {"ops.unsupported", "shapes.dynamic"}


def test_cli_lint_exit_codes(tmp_path, capsys):
    from sparsetrt.cli import main

    assert main(["lint", str(save(tmp_path, *w4a16(), name="ok.onnx"))]) == 0
    assert main(["lint", str(save(tmp_path, *w4a16(), opset=19, name="bad.onnx"))]) == 1
    assert "onnx.block-opset" in capsys.readouterr().out
    assert main(["lint", str(tmp_path / "nope.onnx")]) == 2
