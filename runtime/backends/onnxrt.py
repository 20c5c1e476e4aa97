"""ONNX Runtime behind the decoder interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from sparsetrt.export.qdq_onnx import dequantized_weights
from sparsetrt.layout import onnx_files
from sparsetrt.prune.verify import consumers_of
from sparsetrt.runtime.backends.base import GraphRunner, graph_interface


class OnnxRuntimeRunner(GraphRunner):
    """ONNX Runtime on the CPU (or the first of `providers` that is installed)."""

    backend = "onnxruntime"

    def __init__(self, onnx_path: Path, providers=("CPUExecutionProvider",), threads: int | None = None,
                 model: onnx.ModelProto | None = None):
        """`model`: the file at `onnx_path` as already loaded (and changed) in memory, to run instead of it."""
        graph = (model or onnx.load(str(onnx_path), load_external_data=False)).graph  # structure only; read once
        super().__init__(graph_interface(graph))
        options = ort.SessionOptions()
        # ORT fuses DequantizeLinear(int4, blocked) + MatMul into its MatMulNBits kernel, which by default
        # quantizes activations to int8 (accuracy level 4): ~0.5 % error that the ONNX graph does not ask
        # for. Level 1 keeps float activations, so ORT computes what the file (and TensorRT) specifies.
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
        if threads:
            options.intra_op_num_threads = threads
        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        folded = fold_table_dequantization(Path(onnx_path), graph)
        self.folded_tables = folded is not None
        model = folded or model
        source = str(onnx_path) if model is None else model.SerializeToString()
        self.session = ort.InferenceSession(source, options, providers=chosen,
                                            disabled_optimizers=broken_optimizers(graph))
        self.providers = self.session.get_providers()
        # GroupQueryAttention (the ONNX Runtime target's attention) refuses a batch of several rows that each bring
        # several new tokens to a non-empty cache (a chunked prefill of a batch): such a call runs row by row
        self.row_by_row = any(node.op_type == "GroupQueryAttention" for node in graph.node)
        past = next(i for i in self.session.get_inputs() if i.name == self.past_names[0])
        self.cache_dtype = np.float16 if "float16" in past.type else np.float32

    def _ids(self, array):
        return np.asarray(array, dtype=np.int64)

    def _empty(self, shape):
        return np.zeros(shape, dtype=self.cache_dtype)

    def _run(self, feeds):
        names = ["logits", *self.present_names]
        batch, new = feeds["input_ids"].shape
        if self.row_by_row and batch > 1 and new > 1 and feeds[self.past_names[0]].shape[2] > 0:
            rows = [self.session.run(names, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(batch)]
            return {name: np.concatenate([row[j] for row in rows]) for j, name in enumerate(names)}
        return dict(zip(names, self.session.run(names, feeds)))

    @staticmethod
    def _to_numpy(array):
        return np.asarray(array).astype(np.float32, copy=False)


def broken_optimizers(graph) -> list[str]:
    """ORT graph transformers that break this graph. ORT 1.32 fails to load a graph whose MatMul outputs are
    requantized (INT8 GEMM outputs, --int8-gemm-outputs): QDQS8ToU8 turns the int8 Q/DQ into uint8, and
    QDQPropagation then copies a QuantizeLinear past the Reshape after q_proj with an int8 output type and a uint8
    zero point ("output_dtype INT8 does not match y_zero_point type UINT8"). Without the propagation the graph
    runs as written; graphs without requantized outputs keep every optimization."""
    producers = {o: n for n in graph.node for o in n.output}
    requantized = any(n.op_type == "QuantizeLinear" and getattr(producers.get(n.input[0]), "op_type", "") == "MatMul"
                      for n in graph.node)
    return ["QDQPropagationTransformer"] if requantized else []


def fold_table_dequantization(onnx_path: Path, graph=None):
    """The model with weight-only DequantizeLinear nodes that feed no MatMul directly (the vocabulary table's:
    read by Gather and by Transpose -> MatMul) replaced by their float result, or None when there are none.

    Why: ONNX Runtime's CPU provider fuses DQ -> MatMul but not DQ -> Gather or DQ -> Transpose -> MatMul, and
    keeps DQ nodes out of constant folding (to preserve Q/DQ fusions), so it would dequantize the 28 M-entry
    SmolLM2 table on every decode step (73 % of an INT8 step, measured). Folding once at load is what TensorRT's
    builder does with constant weights; the file on disk stays quantized. Returns None for graphs over 1.5 GB
    (the protobuf limit applies to the in-memory copy); ORT then runs the file as it is. `graph`: the file's
    GraphProto without external data, when the caller has it already."""
    if graph is None:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    consumers = consumers_of(graph)
    inits = {i.name for i in graph.initializer}
    tables = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
              and not any(user.op_type == "MatMul" for user, _ in consumers.get(n.output[0], []))]
    if not tables or sum(f.stat().st_size for f in onnx_files(onnx_path)) > 1.5e9:
        return None
    model = onnx.load(str(onnx_path), load_external_data=True)
    weights = dequantized_weights(onnx_path, model=model, only={n.output[0] for n in tables})
    folded = {n.output[0]: weights[n.input[0]][0].astype(_np_float(model, n)) for n in tables}
    kept = [n for n in model.graph.node if not (n.op_type == "DequantizeLinear" and n.output[0] in folded)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(numpy_helper.from_array(array, name) for name, array in folded.items())
    used = {name for node in model.graph.node for name in node.input}
    survivors = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(survivors)
    return model


def _np_float(model, dq_node):
    """The float type a DequantizeLinear produces: its scale's type."""
    scale = next(i for i in model.graph.initializer if i.name == dq_node.input[1])
    return onnx.helper.tensor_dtype_to_np_dtype(scale.data_type)
