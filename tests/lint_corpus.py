"""Small ONNX files, good and deliberately broken, that `sparsetrt lint` and TensorRT-RTX's parser and builder both
judge (tests/test_lint_vs_builder.py): each case is a name, what it is, and a function writing it into a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from test_lint import K, N, int4_weight, save, w4a16, w8a8


def matmulnbits(tmp: Path) -> Path:
    node = helper.make_node("MatMulNBits", ["x", "w", "ws"], ["y"], domain="com.microsoft", K=K, N=N, bits=4,
                            block_size=128, name="nbits")
    inits = [numpy_helper.from_array(np.zeros((N, K // 128, 64), np.uint8), "w"),
             numpy_helper.from_array(np.ones((N * K // 128,), np.float16), "ws")]
    return save(tmp, [node], inits, extra_opsets=[helper.make_opsetid("com.microsoft", 1)], name="nbits.onnx")


def per_tensor_int4(tmp: Path) -> Path:
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], name="weight_dq"),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    return save(tmp, nodes, [int4_weight(), numpy_helper.from_array(np.array(0.01, np.float16), "ws")],
                name="int4-tensor.onnx")


def block_32(tmp: Path) -> Path:
    return save(tmp, *w4a16(block=32, scale_shape=(K // 32, N)), name="block32.onnx")


def wrong_block_scale(tmp: Path) -> Path:
    return save(tmp, *w4a16(block=128, scale_shape=(3, N)), name="block-scale.onnx")


def nonconstant_scale(tmp: Path) -> Path:
    """The weight's scale computed at run time (from the input) instead of stored."""
    nodes, inits = w8a8()
    nodes = [helper.make_node("ReduceMax", ["x"], ["xmax"], keepdims=0, name="amax"),
             helper.make_node("Div", ["xmax", "c127"], ["dyn_scale"], name="scale_from_input"),
             *[helper.make_node(n.op_type, [("dyn_scale" if i == "w8s" else i) for i in n.input], n.output,
                                name=n.name, **{a.name: helper.get_attribute_value(a) for a in n.attribute})
               for n in nodes]]
    inits = [i for i in inits if i.name != "w8s"] + [numpy_helper.from_array(np.array(127, np.float16), "c127")]
    return save(tmp, nodes, inits, name="dyn-scale.onnx")


def nonzero_zero_point(tmp: Path) -> Path:
    nodes, inits = w8a8()
    inits[2] = numpy_helper.from_array(np.array(3, np.int8), "xz")
    return save(tmp, nodes, inits, name="zp.onnx")


def uint8_quantize(tmp: Path) -> Path:
    nodes, inits = w8a8()
    nodes[0] = helper.make_node("QuantizeLinear", ["x", "xs"], ["xq"], name="act_q")
    return save(tmp, nodes, inits, name="u8.onnx")


def external(tmp: Path, damage: str | None) -> Path:
    nodes, inits = w4a16()
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT16, ["b", K])],
                              [helper.make_tensor_value_info("y", T.FLOAT16, ["b", N])], initializer=inits)
    path = tmp / f"ext-{damage}.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path),
                    save_as_external_data=True, location=f"ext-{damage}.onnx.data", size_threshold=0)
    data = tmp / f"ext-{damage}.onnx.data"
    if damage == "truncated":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "missing":
        data.unlink()
    return path


def unsupported_op(tmp: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"], name="det")], "g",
                              [helper.make_tensor_value_info("x", T.FLOAT, ["b", 4, 4])],
                              [helper.make_tensor_value_info("y", T.FLOAT, ["b"])])
    path = tmp / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


# name: (what it is, writer). Judged by lint (ok / errors) and by TensorRT-RTX (builds / rejects).
CASES = {
    "w4a16": ("blocked INT4 weight, block 128, opset 21", lambda t: save(t, *w4a16(), name="w4a16.onnx")),
    "w8a8": ("INT8 Q/DQ activations and per-channel weights", lambda t: save(t, *w8a8(), name="w8a8.onnx")),
    "external-data": ("w4a16 with its weights in a .data file", lambda t: external(t, None)),
    "matmulnbits": ("ONNX Runtime's MatMulNBits (com.microsoft)", matmulnbits),
    "per-tensor-int4": ("INT4 weight with one scale for the tensor", per_tensor_int4),
    "block-32": ("blocked INT4 with block size 32", block_32),
    "block-scale-shape": ("blocked INT4 whose scale has the wrong number of blocks", wrong_block_scale),
    "blocked-dq-opset-19": ("blocked DequantizeLinear at opset 19", lambda t: save(t, *w4a16(), opset=19,
                                                                                   name="op19.onnx")),
    "qdq-scales-differ": ("a Q/DQ pair whose scales differ", lambda t: save(t, *w8a8(dq_scale="xs2"),
                                                                           name="qdq2.onnx")),
    "non-constant-scale": ("a weight scale computed at run time", nonconstant_scale),
    "zero-point-3": ("INT8 zero point 3", nonzero_zero_point),
    "uint8-quantize": ("QuantizeLinear without a zero point (UINT8)", uint8_quantize),
    "truncated-external-data": ("the .data file cut short", lambda t: external(t, "truncated")),
    "missing-external-data": ("the .data file missing", lambda t: external(t, "missing")),
    "unsupported-op": ("an op the parser has no importer for (Det)", unsupported_op),
}
