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

from sparsetrt.errors import SparsetrtError
from sparsetrt.export.quantize import LinearQuant
from sparsetrt.export.qmath import pack_int4
from sparsetrt.prune.verify import consumers_of, digest

MIN_QDQ_OPSET = 21


def locate_weights(graph, reference: dict[str, np.ndarray]) -> dict[str, str]:
    """module name -> the initializer holding its weight transposed ([in, out]) and consumed by MatMul."""
    from onnx import helper, numpy_helper

    wanted: dict[str, str] = {}
    dtypes = set()
    candidates = {}
    for init in graph.initializer:
        if len(init.dims) == 2:
            candidates[init.name] = init
            dtypes.add(init.data_type)
    hashes = {}
    for module, weight in reference.items():
        for dtype in dtypes:
            np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
            hashes[digest(weight.T.astype(np_dtype))] = module
    for name, init in candidates.items():
        module = hashes.get(digest(numpy_helper.to_array(init)))
        if module is not None:
            wanted.setdefault(module, name)
    return wanted


def write_qdq_onnx(src: Path, dst: Path, quants: dict[str, LinearQuant], reference: dict[str, np.ndarray]) -> dict:
    """Write the quantized copy of `src` to `dst` (+ `dst`.data); returns a summary of what changed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src), load_external_data=True)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_QDQ_OPSET:
        raise SparsetrtError(f"{src} has opset {opset}; per-channel/blocked DequantizeLinear needs opset "
                             f">= {MIN_QDQ_OPSET}: re-export with --opset 21")
    graph = model.graph
    located = locate_weights(graph, {k: reference[k] for k in quants})
    missing = sorted(set(quants) - set(located))
    if missing:
        raise SparsetrtError(f"{src}: no initializer holds the weight of {', '.join(missing[:3])}"
                             f"{' ...' if len(missing) > 3 else ''}; was it exported from this checkpoint?")
    consumers = consumers_of(graph)
    float_type = next(i.data_type for i in graph.initializer if i.name == located[next(iter(located))])
    np_float = helper.tensor_dtype_to_np_dtype(float_type)

    new_inits, before = [], {}  # before[id(node)] = nodes to insert in front of it
    retired = set()
    for module, lq in quants.items():
        init_name = located[module]
        users = consumers.get(init_name, [])
        if not users or any(n.op_type != "MatMul" or i != 1 for n, i in users):
            raise SparsetrtError(f"{module}: weight {init_name} is not consumed as a MatMul's second input; "
                                 "this graph layout is not supported for Q/DQ insertion")
        q_name, s_name, dq_out = f"{module}.weight_quantized", f"{module}.weight_scale", f"{module}.weight_dequantized"
        q_t = lq.q.t().contiguous()  # [in, out], the layout the MatMul consumes
        if lq.block is None:
            new_inits.append(numpy_helper.from_array(q_t.numpy().astype(np.int8), q_name))
            new_inits.append(numpy_helper.from_array(lq.scale.numpy().astype(np_float), s_name))
            dq = helper.make_node("DequantizeLinear", [q_name, s_name], [dq_out], axis=1, name=f"{module}/weight_dq")
        else:
            new_inits.append(helper.make_tensor(q_name, TensorProto.INT4, list(q_t.shape), pack_int4(q_t), raw=True))
            new_inits.append(numpy_helper.from_array(lq.scale.t().contiguous().numpy().astype(np_float), s_name))
            dq = helper.make_node("DequantizeLinear", [q_name, s_name], [dq_out], axis=0, block_size=lq.block,
                                  name=f"{module}/weight_dq")
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
        retired.add(init_name)

    still_used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name not in retired or i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    nodes = []
    for node in graph.node:
        nodes.extend(before.get(id(node), []))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)

    dst.parent.mkdir(parents=True, exist_ok=True)
    data = dst.with_name(dst.name + ".data")
    if data.exists():
        data.unlink()  # onnx appends to an existing data file
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return {"quantized_matmuls": sum(len(consumers[located[m]]) for m in quants), "float_type": str(np_float),
            "retired_initializers": len(retired)}


def dequantized_weights(path: Path) -> dict[str, tuple[np.ndarray, str]]:
    """Every DequantizeLinear over an integer initializer, dequantized: {initializer: (array, dq output)}."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=True)
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        attrs = {a.name: helper_attr(a) for a in node.attribute}
        axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
        if block:
            scale = np.repeat(scale, block, axis=axis)
        elif scale.ndim == 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
        out[node.input[0]] = (q * scale, node.output[0])
    return out


def helper_attr(attribute):
    from onnx import helper

    return helper.get_attribute_value(attribute)


def verify_qdq_onnx(path: Path, modules: dict[str, np.ndarray], sparsity: dict | None):
    """After dequantization, every pruned module's weight in `path` still has its pattern along the
    MatMul's reduction axis, and every zero of the source weight is still exactly zero."""
    import onnx

    from sparsetrt.prune.verify import VerifyResult, check_pattern, reduction_axes

    result = VerifyResult(where=f"ONNX {path} (dequantized)")
    weights = dequantized_weights(path)
    consumers = consumers_of(onnx.load(str(path), load_external_data=False).graph)
    claimed = (sparsity or {}).get("modules", {})
    for module, source in modules.items():
        init = f"{module}.weight_quantized"
        if init not in weights:
            result.failures.append(f"{module}: no DequantizeLinear over {init}")
            continue
        array = weights[init][0]  # [in, out]
        result.checked += 1
        if array.shape != source.T.shape:
            result.failures.append(f"{module}: shape {array.shape}, expected {source.T.shape}")
            continue
        lost = int(((source.T == 0) & (array != 0)).sum())
        if lost:
            result.failures.append(f"{module}: {lost} pruned zeros became non-zero after quantize -> dequantize")
        if module in claimed:
            if reduction_axes(init, consumers) != {0}:
                result.failures.append(f"{module}: not consumed with its input features as the reduction axis")
            elif problem := check_pattern(module, array, claimed[module]["pattern"], axis=0):
                result.failures.append(problem)
    return result
