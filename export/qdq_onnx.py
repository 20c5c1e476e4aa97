"""Rewrite an exported float ONNX graph into TensorRT's explicit-quantization form.

For every quantized Linear (found by content: its weight, transposed, is the MatMul's second input):
  INT8 W8A8   X -> [Mul(pre_scale)] -> QuantizeLinear(s_x, 0) -> DequantizeLinear(s_x, 0) -> MatMul
              W -> int8 initializer [in, out] -> DequantizeLinear(s_w[out], axis=1)    ------^
  INT4 W4A16  X -> [Mul(pre_scale)] ------------------------------------------------> MatMul
              W -> int4 initializer [in, out] -> DequantizeLinear(s_w[in/B, out], axis=0, block_size=B)
Only standard ONNX ops (opset >= 21 for blocked DequantizeLinear); no ONNX Runtime contrib ops, so the same
file serves TensorRT and ONNX Runtime. Rewriting the already-exported graph instead of exporting again keeps
the quantized files structurally identical to the float ones and costs seconds, not minutes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsetrt.errors import SparsetrtError
from sparsetrt.lazy import lazy_import
from sparsetrt.onnx_io import initializer_array
from sparsetrt.prune.verify import VerifyResult, check_pattern, consumers_of, digest, reduction_axes

# the quantizer's tensors (torch) only where Q/DQ files are written; reading them back (ONNX Runtime's runner) needs none
qmath = lazy_import("sparsetrt.export.qmath")

MIN_QDQ_OPSET = 21


def find_initializers(graph, arrays: dict) -> dict:
    """key -> name of the 2-D initializer whose content equals arrays[key] (in any float type the graph
    stores weights in); keys whose array is not found are left out."""
    candidates = [init for init in graph.initializer if len(init.dims) == 2]
    dtypes = {init.data_type for init in candidates}
    hashes = {}
    for key, array in arrays.items():
        for dtype in dtypes:
            hashes.setdefault(digest(np.ascontiguousarray(array).astype(helper.tensor_dtype_to_np_dtype(dtype))), key)
    found = {}
    for init in candidates:
        key = hashes.get(digest(numpy_helper.to_array(init)))
        if key is not None:
            found.setdefault(key, init.name)
    return found


def locate_weights(graph, reference: dict[str, np.ndarray]) -> dict[str, str]:
    """module name -> the initializer holding its weight transposed ([in, out]) and consumed by MatMul."""
    return find_initializers(graph, {module: weight.T for module, weight in reference.items()})


def locate_tables(graph, reference: dict[str, np.ndarray]) -> dict[str, tuple[str, bool]]:
    """table -> (initializer, transposed): a vocabulary table is stored as [vocab, hidden] when a Gather (or a
    Transpose in front of the lm_head's MatMul) reads it, as [hidden, vocab] when only a MatMul does."""
    found = find_initializers(graph, {(name, flip): (table.T if flip else table)
                                      for name, table in reference.items() for flip in (False, True)})
    located = {}
    for (name, flip), init in sorted(found.items(), key=lambda item: item[0][1]):  # as stored first
        located.setdefault(name, (init, flip))
    return located


def weight_dequantize(name: str, lq: qmath.LinearQuant, transposed: bool, np_float) -> tuple[list, object]:
    """The integer + scale initializers of `lq` and the DequantizeLinear that restores them, laid out as the
    graph stores the weight: transposed ([in, out], a MatMul's B) or as in PyTorch ([out, in], a table).
    Per-channel scales run along the output channels, INT4 blocks along the inputs, in either layout."""
    q = lq.q.t().contiguous() if transposed else lq.q
    q_name, s_name = f"{name}.weight_quantized", f"{name}.weight_scale"
    out_axis, in_axis = (1, 0) if transposed else (0, 1)
    if lq.block is None:
        q_init = numpy_helper.from_array(q.numpy().astype(np.int8), q_name)
        scale, attrs = lq.scale, {"axis": out_axis}
    else:
        q_init = helper.make_tensor(q_name, TensorProto.INT4, list(q.shape), qmath.pack_int4(q), raw=True)
        scale, attrs = (lq.scale.t().contiguous() if transposed else lq.scale), {"axis": in_axis, "block_size": lq.block}
    s_init = numpy_helper.from_array(scale.numpy().astype(np_float), s_name)
    node = helper.make_node("DequantizeLinear", [q_name, s_name], [f"{name}.weight_dequantized"],
                            name=f"{name}/weight_dq", **attrs)
    return [q_init, s_init], node


def write_qdq_onnx(src: Path, dst: Path, quants: dict[str, qmath.LinearQuant], reference: dict[str, np.ndarray],
                   tables: dict[str, qmath.LinearQuant] | None = None,
                   table_reference: dict[str, np.ndarray] | None = None) -> dict:
    """Write the quantized copy of `src` to `dst` (+ `dst`.data); returns a summary of what changed.

    `quants` are W8A8/W4A16 Linears (a MatMul's weight, activation Q/DQ for INT8); `tables` are weight-only
    vocabulary tables, dequantized once for every reader (Gather, Transpose -> MatMul). `reference` /
    `table_reference` hold the float values the graph holds now, to find the initializers by content.
    """
    tables = tables or {}
    model = onnx.load(str(src), load_external_data=True)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_QDQ_OPSET:
        raise SparsetrtError(f"{src} has opset {opset}; per-channel/blocked DequantizeLinear needs opset "
                             f">= {MIN_QDQ_OPSET}: re-export with --opset 21")
    graph = model.graph
    located = locate_weights(graph, {k: reference[k] for k in quants})
    located_tables = locate_tables(graph, {k: table_reference[k] for k in tables})
    missing = sorted(set(quants) - set(located)) + sorted(set(tables) - set(located_tables))
    if missing:
        raise SparsetrtError(f"{src}: no initializer holds the weight of {', '.join(missing[:3])}"
                             f"{' ...' if len(missing) > 3 else ''}; was it exported from this checkpoint?")
    consumers = consumers_of(graph)
    first = located[next(iter(located))] if located else next(iter(located_tables.values()))[0]
    np_float = helper.tensor_dtype_to_np_dtype(next(i.data_type for i in graph.initializer if i.name == first))

    new_inits, before, after = [], {}, {}  # before/after[id(node)] = nodes to insert in front of / behind it
    retired = set()
    for module, lq in quants.items():
        init_name = located[module]
        users = consumers.get(init_name, [])
        if not users or any(n.op_type != "MatMul" or i != 1 for n, i in users):
            raise SparsetrtError(f"{module}: weight {init_name} is not consumed as a MatMul's second input; "
                                 "this graph layout is not supported for Q/DQ insertion")
        inits, dq = weight_dequantize(module, lq, True, np_float)
        new_inits.extend(inits)
        dq_out = dq.output[0]
        for node, _ in users:
            inserted = [dq] if node is users[0][0] else []
            x = node.input[0]
            if lq.pre_scale is not None:
                pre_name = f"{module}.pre_quant_scale"
                if node is users[0][0]:
                    new_inits.append(numpy_helper.from_array(lq.pre_scale.numpy().astype(np_float), pre_name))
                scaled = f"{module}/{node.name}/input_scaled"
                inserted.append(helper.make_node("Mul", [x, pre_name], [scaled], name=f"{module}/{node.name}/pre_scale"))
                x = scaled
            if lq.input_scale is not None:
                xs, xz = f"{module}.input_scale", f"{module}.input_zero_point"
                if node is users[0][0]:
                    new_inits.append(numpy_helper.from_array(np.array(lq.input_scale, dtype=np_float), xs))
                    new_inits.append(numpy_helper.from_array(np.array(0, dtype=np.int8), xz))
                xq, xdq = f"{module}/{node.name}/input_q", f"{module}/{node.name}/input_dq"
                inserted.append(helper.make_node("QuantizeLinear", [x, xs, xz], [xq], name=f"{module}/{node.name}/input_q"))
                inserted.append(helper.make_node("DequantizeLinear", [xq, xs, xz], [xdq], name=f"{module}/{node.name}/input_dq"))
                x = xdq
            node.input[0] = x
            node.input[1] = dq_out
            before.setdefault(id(node), []).extend(inserted)
            if lq.output_scale is not None:  # INT8 out: Q/DQ on the MatMul's result, every reader rewired to it
                ys, yz = f"{module}.output_scale", f"{module}.output_zero_point"
                if node is users[0][0]:
                    new_inits.append(numpy_helper.from_array(np.array(lq.output_scale, dtype=np_float), ys))
                    new_inits.append(numpy_helper.from_array(np.array(0, dtype=np.int8), yz))
                y = node.output[0]
                yq, ydq = f"{module}/{node.name}/output_q", f"{module}/{node.name}/output_dq"
                for reader, index in consumers.get(y, []):
                    reader.input[index] = ydq
                graph_outputs = [o for o in graph.output if o.name == y]
                after.setdefault(id(node), []).extend([
                    helper.make_node("QuantizeLinear", [y, ys, yz], [yq], name=f"{module}/{node.name}/output_q"),
                    helper.make_node("DequantizeLinear", [yq, ys, yz], [ydq], name=f"{module}/{node.name}/output_dq")])
                if graph_outputs:
                    raise SparsetrtError(f"{module}: its MatMul output {y} is a graph output; it cannot be requantized")
        retired.add(init_name)

    table_summary = {}
    for name, lq in tables.items():
        init_name, stored_transposed = located_tables[name]
        users = consumers.get(init_name, [])
        inits, dq = weight_dequantize(name, lq, stored_transposed, np_float)
        new_inits.extend(inits)
        for node, index in users:
            node.input[index] = dq.output[0]
        if users:
            before.setdefault(id(users[0][0]), []).append(dq)  # users are in graph order: the first comes first
        retired.add(init_name)
        table_summary[name] = {"initializer": init_name, "bits": 8 if lq.block is None else 4, "block": lq.block,
                               "readers": sorted({n.op_type for n, _ in users})}

    still_used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name not in retired or i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    nodes = []
    for node in graph.node:
        nodes.extend(before.get(id(node), []))
        nodes.append(node)
        nodes.extend(after.get(id(node), []))
    del graph.node[:]
    graph.node.extend(nodes)

    dst.parent.mkdir(parents=True, exist_ok=True)
    data = dst.with_name(dst.name + ".data")
    if data.exists():
        data.unlink()  # onnx appends to an existing data file
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return {"quantized_matmuls": sum(len(consumers[located[m]]) for m in quants), "float_type": str(np_float),
            "requantized_outputs": sum(len(consumers[located[m]]) for m, lq in quants.items()
                                       if lq.output_scale is not None),
            "retired_initializers": len(retired), "tables": table_summary}


def dequantized_weights(path: Path, model=None, only: set[str] | None = None) -> dict[str, tuple[np.ndarray, str]]:
    """Every DequantizeLinear over an integer initializer (of `path`, or of the already loaded `model`; only the
    nodes whose output is in `only` when given), dequantized: {initializer: (array, dq output)}."""
    model = model if model is not None else onnx.load(str(path), load_external_data=True)
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits or (only and node.output[0] not in only):
            continue
        out[node.input[0]] = (dequantize_initializer(node, inits), node.output[0])
    return out


def dequantize_initializer(node, inits: dict, base_dir: Path | None = None) -> np.ndarray:
    """The float values of DequantizeLinear `node` over integer initializer inits[node.input[0]] (read on its own
    from the external-data file under `base_dir` when given, else from the loaded proto)."""
    def read(name):
        if base_dir is None:
            return numpy_helper.to_array(inits[name])
        return initializer_array(inits[name], base_dir)

    q = read(node.input[0]).astype(np.float32)
    scale = read(node.input[1]).astype(np.float32)
    attrs = {a.name: helper_attr(a) for a in node.attribute}
    axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
    if block:
        scale = np.repeat(scale, block, axis=axis)
    elif scale.ndim == 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
    return q * scale


def helper_attr(attribute):
    return helper.get_attribute_value(attribute)


def verify_qdq_onnx(path: Path, modules: dict[str, np.ndarray], sparsity: dict | None):
    """After dequantization, every pruned module's weight in `path` still has its pattern along the
    MatMul's reduction axis, and every zero of its source weight is still exactly zero. Every module's
    weight must be present with its shape; unpruned modules are not held to their incidental zeros."""
    result = VerifyResult(where=f"ONNX {path} (dequantized)")
    weights = dequantized_weights(path)
    consumers = consumers_of(onnx.load(str(path), load_external_data=False).graph)
    claimed = (sparsity or {}).get("modules", {})
    for module, source in modules.items():
        init = f"{module}.weight_quantized"
        if init not in weights:
            result.failures.append(f"{module}: no DequantizeLinear over {init}")
            continue
        check_dequantized(result, module, weights[init][0], source, claimed, consumers)
    return result


def check_dequantized(result, module: str, array: np.ndarray, source: np.ndarray, claimed: dict, consumers) -> None:
    """One module's dequantized weight `array` ([in, out]) against its float `source` ([out, in]): its shape,
    and for a pruned module its zeros kept and its pattern along the reduction axis (failures into `result`)."""
    init = f"{module}.weight_quantized"
    result.checked += 1
    if array.shape != source.T.shape:
        result.failures.append(f"{module}: shape {array.shape}, expected {source.T.shape}")
        return
    if module not in claimed:
        return  # not pruned: its few incidental zeros are ordinary values GPTQ may move
    lost = int(((source.T == 0) & (array != 0)).sum())
    if lost:
        result.failures.append(f"{module}: {lost} pruned zeros became non-zero after quantize -> dequantize")
    if reduction_axes(init, consumers) != {0}:
        result.failures.append(f"{module}: not consumed with its input features as the reduction axis")
    elif problem := check_pattern(module, array, claimed[module]["pattern"], axis=0):
        result.failures.append(problem)
