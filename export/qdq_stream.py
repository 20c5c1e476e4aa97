"""The Q/DQ rewrite with bounded memory: what qdq_onnx.write_qdq_onnx writes, one tensor in memory at a time.

write_qdq_onnx loads the float graph with every weight (16 GB for an 8B model in fp16) and the integers of every
Linear. Here the initializers that carry each weight are found by digest, reading one from the .data file and one
from the checkpoint at a time; the graph is then rewritten with onnx_ir, where every initializer is a LazyTensor:
an untouched one reads its bytes from the source .data file, a quantized weight packs its integers from the quant
shard, each when the save reaches it. The nodes are qdq_onnx's: W8A8 Linears get their activation Q/DQ (and
SmoothQuant's Mul, and with --int8-gemm-outputs a Q/DQ on the result), W4A16 ones and the tables weight-only.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from onnx import TensorProto, helper

from sparsetrt.checkpoint import CheckpointReader
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.qdq_onnx import MIN_QDQ_OPSET, check_dequantized, dequantize_initializer
from sparsetrt.export.qmath import pack_int4
from sparsetrt.onnx_io import PLAIN_DTYPES, initializer_array, load_onnx
from sparsetrt.prune.verify import VerifyResult, consumers_of, digest, digest_of_rows, iter_checkpoint_weights


def locate_streamed(onnx_path: Path, graph, checkpoint: Path, wanted: dict) -> dict:
    """key -> name of the 2-D initializer of `graph` whose content is a checkpoint tensor, where `wanted` maps
    key -> (checkpoint tensor name, transposed). Keys not found are left out."""
    reader = CheckpointReader(checkpoint)
    matrices = [init for init in graph.initializer if len(init.dims) == 2]
    by_hash: dict[str, list] = defaultdict(list)
    hashed = set()
    found = {}
    for init in matrices:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type))
        if dtype not in hashed:  # the checkpoint is hashed once per dtype the graph stores matrices in
            hashed.add(dtype)
            for key, (tensor, transposed) in wanted.items():
                by_hash[checkpoint_digest(reader, tensor, transposed, dtype)].append(key)
        for key in by_hash.get(initializer_digest(init, onnx_path.parent), []):
            found.setdefault(key, init.name)
    return found


def checkpoint_digest(reader, tensor: str, transposed: bool, dtype: np.dtype) -> str:
    """digest() of a checkpoint tensor cast (through fp32) to `dtype`, transposed or not, hashed chunk by chunk
    (CheckpointReader.chunks): an 8B vocabulary table is never held (whole and transposed, it was 2 GiB in fp32)."""
    shape = reader.header(tensor)[0]
    pieces = (chunk.numpy().astype(dtype) for chunk in reader.chunks(tensor, torch.float32, transposed))
    return digest_of_rows(pieces, shape[::-1] if transposed else shape, dtype)


def initializer_digest(init, base_dir: Path) -> str:
    """digest() of an initializer, its external bytes hashed in chunks straight from the .data file (they are
    the array's C-order bytes); anything else read whole."""
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type))
    if init.data_location != TensorProto.EXTERNAL or dtype.name not in PLAIN_DTYPES:
        return digest(initializer_array(init, base_dir))
    info = {entry.key: entry.value for entry in init.external_data}
    count = int(np.prod(init.dims, dtype=np.int64))
    path, offset = Path(base_dir) / info["location"], int(info.get("offset", 0))
    step = max(1, (64 << 20) // dtype.itemsize)

    def pieces():
        for start in range(0, count, step):
            piece = np.fromfile(path, dtype=dtype, count=min(step, count - start), offset=offset + start * dtype.itemsize)
            if piece.size != min(step, count - start):
                raise SparsetrtError(f"{path} is shorter than its model says ({init.name}); re-export it")
            yield piece

    return digest_of_rows(pieces(), tuple(init.dims), dtype)


def write_qdq_onnx_streamed(src: Path, dst: Path, checkpoint: Path, shards, table_shards,
                            table_keys: dict[str, str]) -> dict:
    """Write the quantized copy of `src` to `dst` (+ .data). `shards` (quant_stream.QuantShards) hold the Linears'
    integers and `table_shards` the quantized vocabulary tables', each read when it is written; `table_keys` are
    the tables' checkpoint tensor names and `checkpoint` holds the float weights the graph holds now (to find
    them by content)."""
    src, dst = Path(src), Path(dst)
    proto = load_onnx(src)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_QDQ_OPSET:
        raise SparsetrtError(f"{src} has opset {opset}; per-channel/blocked DequantizeLinear needs opset "
                             f">= {MIN_QDQ_OPSET}: re-export with --opset 21")
    modules = list(shards.file_of)
    wanted = {("linear", m): (f"{m}.weight", True) for m in modules}
    tables = list(table_shards.file_of)
    wanted |= {("table", t, flip): (table_keys[t], flip) for t in tables for flip in (False, True)}
    found = locate_streamed(src, proto.graph, checkpoint, wanted)
    located = {m: found[("linear", m)] for m in modules if ("linear", m) in found}
    located_tables = {}
    for t in tables:
        for flip in (False, True):  # as stored first (a Gather reads [vocab, hidden])
            if ("table", t, flip) in found:
                located_tables.setdefault(t, (found[("table", t, flip)], flip))
    missing = sorted(set(modules) - set(located)) + sorted(set(tables) - set(located_tables))
    if missing:
        raise SparsetrtError(f"{src}: no initializer holds the weight of {', '.join(missing[:3])}"
                             f"{' ...' if len(missing) > 3 else ''}; was it exported from this checkpoint?")
    del proto

    model = ir.load(str(src))
    graph = model.graph
    _read_from_source_file(graph)
    order = {id(node): i for i, node in enumerate(graph)}
    float_type = graph.initializers[next(iter(located.values()), None) or next(iter(located_tables.values()))[0]].dtype
    np_float = float_type.numpy()

    matmuls = requantized = 0
    for module, init_name in located.items():
        users = graph.initializers[init_name].uses()
        if not users or any(u.node.op_type != "MatMul" or u.idx != 1 for u in users):
            raise SparsetrtError(f"{module}: weight {init_name} is not consumed as a MatMul's second input; "
                                 "this graph layout is not supported for Q/DQ insertion")
        _dequantize_in_place(graph, init_name, module, lambda m=module: shards.get(m), shards.blocks[module],
                             transposed=True, np_float=np_float, users=users, order=order)
        for k, node in enumerate(sorted({id(u.node): u.node for u in users}.values(), key=lambda n: order[id(n)])):
            requantized += _quantize_activations(graph, module, node, shards, np_float, first=k == 0)
        matmuls += len(users)
    table_summary = {}
    for name in tables:
        init_name, stored_transposed = located_tables[name]
        users = graph.initializers[init_name].uses()
        readers = sorted({u.node.op_type for u in users})
        block = table_shards.blocks[name]
        _dequantize_in_place(graph, init_name, name, lambda t=name: table_shards.get(t), block,
                             transposed=stored_transposed, np_float=np_float, users=users, order=order)
        table_summary[name] = {"initializer": init_name, "bits": 8 if block is None else 4, "block": block,
                               "readers": readers}

    dst.parent.mkdir(parents=True, exist_ok=True)
    data = dst.with_name(dst.name + ".data")
    if data.exists():
        data.unlink()
    ir.save(model, str(dst), external_data=data.name, size_threshold_bytes=1024, max_workers=1,
            max_in_flight_bytes=256 << 20)
    return {"quantized_matmuls": matmuls, "float_type": str(np.dtype(np_float)), "requantized_outputs": requantized,
            "retired_initializers": len(located) + len(located_tables), "tables": table_summary}


def _read_from_source_file(graph) -> None:
    """Every external initializer becomes a LazyTensor that reads its bytes with one file read when saved
    (onnx_ir's ExternalTensor maps the file, and every page it touched would stay in the RSS)."""
    for value in graph.initializers.values():
        tensor = value.const_value
        if not isinstance(tensor, ir.ExternalTensor):
            continue

        def read(path=tensor.path, offset=tensor.offset or 0, length=tensor.length, dtype=tensor.dtype,
                 shape=tensor.shape):
            with open(path, "rb") as handle:
                handle.seek(offset)
                raw = np.frombuffer(handle.read(length), dtype=dtype.numpy())
            return ir.Tensor(raw.reshape(shape.numpy()), dtype=dtype)

        value.const_value = ir.LazyTensor(read, dtype=tensor.dtype, shape=tensor.shape, name=tensor.name)


def _dequantize_in_place(graph, init_name: str, name: str, load, block: int | None, transposed: bool, np_float,
                         users, order) -> None:
    """Replace initializer `init_name` by integer + scale initializers (lazy: `load()` gives the LinearQuant) and
    a DequantizeLinear in front of its first reader, laid out as qdq_onnx.weight_dequantize lays them out."""
    old = graph.initializers[init_name]
    rows, cols = (old.shape[0], old.shape[1])
    q_type = ir.DataType.INT8 if block is None else ir.DataType.INT4
    out_axis, in_axis = (1, 0) if transposed else (0, 1)
    if block is None:
        scale_shape, attributes = [rows if out_axis == 0 else cols], {"axis": out_axis}
    else:
        scale_shape = [rows // block, cols] if transposed else [rows, cols // block]
        attributes = {"axis": in_axis, "block_size": block}

    def integers():
        q = load().q
        q = q.t().contiguous() if transposed else q
        if block is None:
            return ir.Tensor(q.numpy().astype(np.int8, copy=False))
        return ir.PackedTensor(np.frombuffer(pack_int4(q), dtype=np.uint8), ir.DataType.INT4, shape=list(q.shape))

    def scales():
        scale = load().scale
        scale = scale.t().contiguous() if transposed and block is not None else scale
        return ir.Tensor(scale.numpy().astype(np_float))

    q_value = ir.Value(name=f"{name}.weight_quantized", type=ir.TensorType(q_type), shape=ir.Shape([rows, cols]),
                       const_value=ir.LazyTensor(integers, dtype=q_type, shape=ir.Shape([rows, cols])))
    s_type = ir.DataType.from_numpy(np.dtype(np_float))
    s_value = ir.Value(name=f"{name}.weight_scale", type=ir.TensorType(s_type), shape=ir.Shape(scale_shape),
                       const_value=ir.LazyTensor(scales, dtype=s_type, shape=ir.Shape(scale_shape)))
    graph.register_initializer(q_value)
    graph.register_initializer(s_value)
    first = min((u.node for u in users), key=lambda node: order[id(node)])
    dq = ir.node("DequantizeLinear", [q_value, s_value], attributes=attributes, name=f"{name}/weight_dq")
    dq.outputs[0].name = f"{name}.weight_dequantized"
    graph.insert_before(first, dq)
    for use in users:
        use.node.replace_input_with(use.idx, dq.outputs[0])
    graph.initializers.pop(init_name)


def _quantize_activations(graph, module: str, node, shards, np_float, first: bool) -> int:
    """What qdq_onnx.write_qdq_onnx puts around one MatMul of a W8A8 Linear: SmoothQuant's Mul and the input's
    Q/DQ in front of it, and with an output scale a Q/DQ behind it that every reader of the result reads instead
    (the initializers once per Linear, when `first`). Returns 1 when the output was requantized, else 0."""
    def constant(name: str, array: np.ndarray):
        if not first:
            return graph.initializers[name]
        value = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), shape=ir.Shape(array.shape),
                         const_value=ir.Tensor(array))
        graph.register_initializer(value)
        return value

    def q_dq(x, scale_name: str, zero_name: str, scale: float, tag: str) -> tuple:
        scale_v = constant(scale_name, np.array(scale, dtype=np_float))
        zero_v = constant(zero_name, np.array(0, dtype=np.int8))
        q = ir.node("QuantizeLinear", [x, scale_v, zero_v], name=f"{module}/{node.name}/{tag}_q")
        q.outputs[0].name = q.name
        dq = ir.node("DequantizeLinear", [q.outputs[0], scale_v, zero_v], name=f"{module}/{node.name}/{tag}_dq")
        dq.outputs[0].name = dq.name
        return q, dq

    inserted = []
    x = node.inputs[0]
    if shards.has_pre_scale[module]:
        pre = shards.pre_scale(module).numpy().astype(np_float) if first else None
        pre_v = constant(f"{module}.pre_quant_scale", pre)
        mul = ir.node("Mul", [x, pre_v], name=f"{module}/{node.name}/pre_scale")
        mul.outputs[0].name = f"{module}/{node.name}/input_scaled"
        inserted.append(mul)
        x = mul.outputs[0]
    if shards.input_scales[module] is not None:
        q, dq = q_dq(x, f"{module}.input_scale", f"{module}.input_zero_point", shards.input_scales[module], "input")
        inserted += [q, dq]
        x = dq.outputs[0]
    if inserted:
        graph.insert_before(node, inserted)
        node.replace_input_with(0, x)
    if shards.output_scales[module] is None:
        return 0
    y = node.outputs[0]
    if y.is_graph_output():
        raise SparsetrtError(f"{module}: its MatMul output {y.name} is a graph output; it cannot be requantized")
    readers = list(y.uses())
    q, dq = q_dq(y, f"{module}.output_scale", f"{module}.output_zero_point", shards.output_scales[module], "output")
    for use in readers:
        use.node.replace_input_with(use.idx, dq.outputs[0])
    graph.insert_after(node, [q, dq])
    return 1


def verify_qdq_onnx_streamed(path: Path, checkpoint: Path, modules: list[str], sparsity: dict | None):
    """verify_qdq_onnx, reading one dequantized weight from `path` and one checkpoint weight at a time."""
    path = Path(path)
    result = VerifyResult(where=f"ONNX {path} (dequantized)")
    graph = load_onnx(path).graph
    inits = {i.name: i for i in graph.initializer}
    dq_of = {n.input[0]: n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    consumers = consumers_of(graph)
    claimed = (sparsity or {}).get("modules", {})
    seen = set()
    for module, source in iter_checkpoint_weights(checkpoint, modules):
        seen.add(module)
        init = f"{module}.weight_quantized"
        if init not in dq_of:
            result.failures.append(f"{module}: no DequantizeLinear over {init}")
            continue
        array = dequantize_initializer(dq_of[init], inits, path.parent)
        check_dequantized(result, module, array, source, claimed, consumers)
    result.failures += [f"{m}: weight missing from the checkpoint" for m in modules if m not in seen]
    return result
