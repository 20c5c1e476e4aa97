"""`sparsetrt lint`: a static check of an ONNX file against what TensorRT's ONNX parser accepts.

TensorRT cannot be installed here (and Polygraphy's `check lint` needs it), so this lint is what catches a
bad file before a user's GPU does. Each rule names its source:
  [ops]    onnx-tensorrt docs/operators.md for TensorRT 10.15: opsets 9..24, the operator support matrix
           (rows marked Y below), supported data types, "DequantizeLinear: x_zero_point must be zero",
           "QuantizeLinear: y_zero_point must be 0".
  [schemes] TensorRT developer guide, Quantization Schemes: "INT4 quantization requires per-block scales.
           The supported block sizes are {64, 128}. The block dimension should be one of the last two
           dimensions." and INT4 is weight-only.
  [dq]     TensorRT operator reference, Dequantize/Quantize: the scale "must be a build-time constant";
           scalar (per-tensor), 1-D (per-channel) or same rank as the input (block).
  [explicit] TensorRT developer guide, Explicit Quantization: Q/DQ pairs are fused into the neighbouring
           layer; a Q must feed DQ nodes with the same scale, activations are quantized per tensor and
           weights per output channel; "when using pre-quantized weights, an IDequantizeLayer is required
           between the weights and the linear operator that uses them".
  [onnx]   ONNX DequantizeLinear-21 introduced `block_size`; onnx #3275: protobuf files are limited to 2 GB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from sparsetrt.onnx_io import load_onnx

TARGET = "TensorRT 10.15 ONNX parser"
OPSET_MIN, OPSET_MAX = 9, 24
# Operators marked supported ("Y") in onnx-tensorrt docs/operators.md (TensorRT 10.15).
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization BlackmanWindow
Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression
NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign
RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin
Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
INT4_BLOCK_SIZES = (64, 128)
PROTOBUF_LIMIT = 2**31


@dataclass
class Finding:
    rule: str
    severity: str  # error | warning
    where: str
    message: str

    def line(self) -> str:
        return f"{self.severity.upper():7} [{self.rule}] {self.where}: {self.message}"


@dataclass
class LintReport:
    path: str
    target: str = TARGET
    findings: list[Finding] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, rule: str, where: str, message: str, severity: str = "error") -> None:
        self.findings.append(Finding(rule, severity, where, message))

    def to_json(self) -> dict:
        return {"path": self.path, "target": self.target, "ok": self.ok, "errors": len(self.errors),
                "warnings": len(self.findings) - len(self.errors), "stats": self.stats,
                "findings": [vars(f) for f in self.findings]}

    def text(self) -> str:
        head = f"{self.path}: {'OK' if self.ok else 'FAILED'} for {self.target} " \
               f"({len(self.errors)} errors, {len(self.findings) - len(self.errors)} warnings)"
        return "\n".join([head] + [f"  {f.line()}" for f in self.findings])


def lint_onnx(path: str | Path) -> LintReport:
    path = Path(path)
    model = load_onnx(path)
    report = LintReport(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    constants = set(inits) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))

    opset = _check_opsets(model, report)
    _check_external_data(model, path, report)
    _check_ops_and_types(graph, inits, report)
    _check_inputs(graph, report)
    _check_qdq(graph, inits, constants, consumers, opset, report)
    report.stats.update(nodes=len(graph.node), initializers=len(inits), opset=opset,
                        quantize_nodes=sum(n.op_type == "QuantizeLinear" for n in graph.node),
                        dequantize_nodes=sum(n.op_type == "DequantizeLinear" for n in graph.node))
    return report


def _check_opsets(model, report: LintReport) -> int:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not OPSET_MIN <= opset <= OPSET_MAX:
        report.add("ops.opset", "model", f"default-domain opset {opset} is outside the {OPSET_MIN}..{OPSET_MAX} "
                   f"range the parser supports")
    return opset


def _check_external_data(model, path: Path, report: LintReport) -> None:
    if model.ByteSize() >= PROTOBUF_LIMIT:
        report.add("onnx.protobuf-2gb", "model", "the .onnx protobuf is >= 2 GB; store weights as external data")
    sizes: dict[str, int] = {}
    for init in model.graph.initializer:
        if not uses_external_data(init):
            continue
        info = ExternalDataInfo(init)
        loc = info.location
        if os.path.isabs(loc) or ".." in Path(loc).parts:
            report.add("onnx.external-data", init.name, f"external data location '{loc}' must be relative to the "
                       "model's directory (parsers resolve it there)")
            continue
        data = path.parent / loc
        if loc not in sizes:
            sizes[loc] = data.stat().st_size if data.is_file() else -1
        if sizes[loc] < 0:
            report.add("onnx.external-data", init.name, f"external data file '{loc}' is missing beside the model")
        elif info.length and (info.offset or 0) + info.length > sizes[loc]:
            report.add("onnx.external-data", init.name, f"bytes {info.offset}..{info.offset + info.length} lie "
                       f"beyond the end of '{loc}' ({sizes[loc]} bytes): truncated file")
    report.stats["external_data_files"] = sorted(sizes)


def _check_ops_and_types(graph, inits, report: LintReport) -> None:
    supported_types = {T.FLOAT, T.FLOAT16, T.BFLOAT16, T.INT32, T.INT64, T.INT8, T.INT4, T.BOOL, T.DOUBLE,
                       T.FLOAT8E4M3FN, T.FLOAT4E2M1}
    for node in graph.node:
        where = f"{node.op_type} '{node.name or node.output[0]}'"
        if node.domain not in ("", "ai.onnx"):
            report.add("ops.domain", where, f"operator from domain '{node.domain}' (an ONNX Runtime contrib or custom "
                       "op) is not in TensorRT's parser; export standard ONNX ops (e.g. DequantizeLinear + MatMul "
                       "instead of MatMulNBits)")
        elif node.op_type not in SUPPORTED_OPS:
            report.add("ops.unsupported", where, "operator is not supported by the TensorRT ONNX parser")
    for init in inits.values():
        if init.data_type not in supported_types:
            report.add("ops.dtype", f"initializer '{init.name}'", f"data type {T.DataType.Name(init.data_type)} "
                       "is not a TensorRT type")
    for value in list(graph.input) + list(graph.output):
        elem = value.type.tensor_type.elem_type
        if elem not in supported_types | {T.UINT8}:
            report.add("ops.dtype", f"graph io '{value.name}'", f"data type {T.DataType.Name(elem)} is not a TensorRT type")


def _check_inputs(graph, report: LintReport) -> None:
    dynamic = {}
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if not value.type.tensor_type.HasField("shape"):
            report.add("shapes.rank", f"input '{value.name}'", "input has no rank; TensorRT needs a known rank")
            continue
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if dim.HasField("dim_param") and dim.dim_param:
                dynamic.setdefault(value.name, {})[axis] = dim.dim_param
            else:
                report.add("shapes.dynamic", f"input '{value.name}'", f"axis {axis} is dynamic but unnamed; name it so "
                           "optimization profiles (min/opt/max) can be given for it")
    report.stats["dynamic_inputs"] = dynamic


def _array(inits, name):
    return numpy_helper.to_array(inits[name]) if name in inits else None


def _check_qdq(graph, inits, constants, consumers, opset: int, report: LintReport) -> None:
    producers = {out: node for node in graph.node for out in node.output}

    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        where = f"{node.op_type} '{node.name or node.output[0]}'"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        block = int(attrs.get("block_size", 0) or 0)
        scale_name = node.input[1] if len(node.input) > 1 else ""
        if scale_name not in constants:
            report.add("dq.scale-constant", where, "scale is not a build-time constant (initializer or Constant)")
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        zp = _array(inits, zp_name) if zp_name else None
        if zp is not None and np.any(zp.astype(np.float32) != 0):
            report.add("ops.zero-point", where, "zero point is not 0; TensorRT quantization is symmetric")
        if block and opset < 21:
            report.add("onnx.block-opset", where, f"block_size needs DequantizeLinear-21; the model imports opset {opset}")
        if node.op_type == "QuantizeLinear":
            _check_quantize(node, where, inits, consumers, zp_name, report)
            continue
        q_name = node.input[0]
        q_init = inits.get(q_name)
        if q_init is not None:
            _check_weight_readers(node, where, consumers, report)
        if q_init is not None and q_init.data_type == T.INT4:
            _check_int4_weight(q_init, attrs, block, scale_name, inits, where, report)
        elif block:
            if q_init is None:
                report.add("schemes.int4-weights", where, "block quantization applies to constant weights only")
        if q_init is not None and q_init.data_type == T.INT8 and not block:
            _check_int8_weight(node, q_init, attrs, scale_name, inits, consumers, producers, where, report)


LINEAR_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose"}


def _check_weight_readers(node, where, consumers, report: LintReport) -> None:
    """[explicit] "When using pre-quantized weights, an IDequantizeLayer is required between the weights and
    the linear operator that uses them": a dequantized weight read by anything else (through a Transpose at
    most) is not a documented form — e.g. an embedding Gather over a quantized table. Warning, not error:
    TensorRT may run the DQ standalone; only an engine build tells."""
    for user, _ in consumers.get(node.output[0], []):
        readers = [user]
        if user.op_type == "Transpose":
            readers = [u for u, _ in consumers.get(user.output[0], [])]
        for reader in readers:
            if reader.op_type not in LINEAR_OPS:
                report.add("explicit.weight-reader", where, f"dequantized weight is read by {reader.op_type} "
                           f"'{reader.name}', not a linear operator; TensorRT documents pre-quantized weights "
                           "only in front of MatMul/Gemm/Conv. Confirm with an engine build, or keep this "
                           "tensor in float (sparsetrt quantize --embeddings float)", severity="warning")


def _check_quantize(node, where, inits, consumers, zp_name, report: LintReport) -> None:
    zp_init = inits.get(zp_name) if zp_name else None
    if zp_init is not None and zp_init.data_type in (T.INT4, T.UINT4):
        report.add("schemes.int4-weights", where, "INT4 is weight-only in TensorRT; activations cannot be quantized to INT4")
    if zp_init is None or zp_init.data_type != T.INT8:
        report.add("explicit.q-type", where, "QuantizeLinear without an int8 zero point produces uint8, which TensorRT "
                   "does not quantize to; give a zero point of type int8 (value 0)")
    scale = _array(inits, node.input[1])
    if scale is not None and scale.size != 1 and node.input[0] not in inits:
        report.add("explicit.activation-per-tensor", where, "activation scale is not a scalar; TensorRT quantizes "
                   "activations per tensor")
    users = consumers.get(node.output[0], [])
    if not users:
        report.add("explicit.qdq-pair", where, "QuantizeLinear output is unused")
    for user, _ in users:
        if user.op_type != "DequantizeLinear":
            report.add("explicit.qdq-pair", where, f"feeds {user.op_type} '{user.name}', not a DequantizeLinear; "
                       "TensorRT can only fuse Q -> DQ pairs")
            continue
        if user.input[1] != node.input[1]:
            a, b = _array(inits, node.input[1]), _array(inits, user.input[1])
            if a is None or b is None or a.shape != b.shape or not np.array_equal(a, b):
                report.add("explicit.qdq-pair", where, f"DequantizeLinear '{user.name}' uses a different scale; "
                           "TensorRT cannot fuse a Q/DQ pair whose scales differ")


def _check_int4_weight(q_init, attrs, block, scale_name, inits, where, report: LintReport) -> None:
    dims = list(q_init.dims)
    if not block:
        report.add("schemes.int4-block", where, "INT4 without block_size (per-tensor or per-channel scale); TensorRT "
                   f"requires per-block INT4 scales with block size in {INT4_BLOCK_SIZES}")
        return
    if block not in INT4_BLOCK_SIZES:
        report.add("schemes.int4-block", where, f"block size {block} is not one of {INT4_BLOCK_SIZES}")
    if len(dims) != 2:
        report.add("schemes.int4-block", where, f"INT4 weight has rank {len(dims)}; expected a 2-D weight")
        return
    axis = int(attrs.get("axis", 1)) % len(dims)
    if dims[axis] % block:
        report.add("schemes.int4-block", where, f"blocked axis {axis} has {dims[axis]} elements, not a multiple of {block}")
    scale = inits.get(scale_name)
    if scale is not None:
        want = list(dims)
        want[axis] = dims[axis] // block
        if list(scale.dims) != want:
            report.add("dq.scale-shape", where, f"block scale has shape {list(scale.dims)}, expected {want}")


def _check_int8_weight(node, q_init, attrs, scale_name, inits, consumers, producers, where, report: LintReport) -> None:
    scale = inits.get(scale_name)
    users = consumers.get(node.output[0], [])
    if scale is not None and len(scale.dims) == 1 and len(q_init.dims) == 2:
        axis = int(attrs.get("axis", 1)) % 2
        for user, index in users:
            if user.op_type == "MatMul" and index == 1 and axis != 1:
                report.add("explicit.weight-per-channel", where, "per-channel weight scale runs along the MatMul's "
                           "reduction axis; TensorRT needs it along the output channels (axis 1 of a [K, N] weight)")
    for user, index in users:
        if user.op_type in ("MatMul", "Gemm"):
            producer = producers.get(user.input[1 - index])
            if producer is None or producer.op_type != "DequantizeLinear":
                report.add("explicit.int8-pair", where, f"{user.op_type} '{user.name}' multiplies this INT8 weight with a "
                           "float activation; TensorRT then runs it in float (no INT8 GEMM). Quantize its input too.",
                           severity="warning")
