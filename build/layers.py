"""The builder's per-layer dump, as data: what every engine layer computes in, and which matmuls run INT8 x INT8,
INT4 weight-only or in float.

TensorRT-RTX prints the dump at the end of a build when its logger is at VERBOSE (Polygraphy's EXTRA_VERBOSE):
  [X] Layers:
      Name: node_linear_2+node_linear_1+node_linear_myl1_2, LayerType: gemm, Inputs: [ { Name: ..., Datatype:
      Half, ... }], Constants: [ { Name: ..., Dimensions: [64,128], Datatype: Half, ... }], Outputs: [...],
      TacticName: ..., Metadata: [ONNX Layer: node_linear_2]...
one line per layer. Its engine inspector needs a GPU, which an AOT build on a CPU does not have, so the log is
where this information is. The parser reads only fields it finds and keeps the rest of the line out of the report.
"""

from __future__ import annotations

import math
import re

_FIELD = re.compile(r"(Name|LayerType|Inputs|Constants|Outputs|TacticName|Metadata): ")
_TENSOR = re.compile(r"\{ Name: (?P<name>.*?), (?:Location: \w+, )?Dimensions: \[(?P<dims>[-\d,]*)\].*?"
                     r"Datatype: (?P<dtype>\w+)")
INTEGER_TYPES = ("Int4", "Int8")


def _tensors(text: str) -> list[dict]:
    return [{"name": m["name"], "dims": [int(d) for d in m["dims"].split(",") if d], "dtype": m["dtype"]}
            for m in _TENSOR.finditer(text)]


def parse_layer_dump(log_text: str) -> list[dict]:
    """Every layer of the last "Layers:" block in a build log: name, type, its input / constant / output tensors
    (name, dims, datatype), the ONNX nodes it fuses."""
    lines = log_text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.rstrip().endswith("] Layers:") or line.strip() == "Layers:"]
    if not starts:
        return []
    layers = []
    for line in lines[starts[-1] + 1:]:
        if not line.startswith(" ") or "Name: " not in line:
            break
        fields = _fields(line.strip())
        layers.append({
            "name": fields.get("Name", ""),
            "type": fields.get("LayerType", ""),
            "inputs": _tensors(fields.get("Inputs", "")),
            "constants": _tensors(fields.get("Constants", "")),
            "outputs": _tensors(fields.get("Outputs", "")),
            "onnx_nodes": re.findall(r"ONNX Layer: ([^\]]+)", fields.get("Metadata", "")),
        })
    return layers


def _fields(line: str) -> dict[str, str]:
    """`Name: a, LayerType: b, Inputs: [ { Name: ... } ], ...` -> {"Name": "a", ...}: the top-level fields only
    (the tensors inside a list have fields of the same names)."""
    depth, depth_at = 0, []
    for char in line:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        depth_at.append(depth)
    marks = [(m.start(), m.end(), m.group(1)) for m in _FIELD.finditer(line) if depth_at[m.start()] == 0]
    fields = {}
    for index, (_, end, key) in enumerate(marks):
        stop = marks[index + 1][0] if index + 1 < len(marks) else len(line)
        fields.setdefault(key, line[end:stop].rstrip(", "))
    return fields


def _matrix(tensor: dict) -> bool:
    return len(tensor["dims"]) >= 2 and sum(d > 1 for d in tensor["dims"]) >= 2


def weight_of(layer: dict, producers: dict[str, dict]) -> dict | None:
    """The weight a gemm multiplies by: a matrix constant of its own, or (INT4 and other weight-only schemes) an
    input produced by a kernel that holds the integer weight and dequantizes it. None for products of two
    activations (attention's Q·K and P·V) and for layers that are no matmul."""
    if layer["type"] != "gemm" and not (layer["type"] == "runtime_fusion" and "Fc" in layer["name"]):
        return None
    own = [c for c in layer["constants"] if _matrix(c)]
    if own:
        return own[0]
    for tensor in layer["inputs"]:
        if not _matrix(tensor) or min(tensor["dims"]) < 0:  # activations have dynamic dims, weights static ones
            continue
        producer = producers.get(tensor["name"]) or {}
        # the kernel that produced it may hold several integer tables (the embedding's beside a weight): the one
        # this gemm gets has the dequantized tensor's size
        packed = [c for c in producer.get("constants", []) if _matrix(c) and c["dtype"] in INTEGER_TYPES
                  and math.prod(c["dims"]) == math.prod(tensor["dims"])]
        if packed:
            return {**packed[0], "name": tensor["name"], "via": producer["name"]}
        return tensor  # a float weight another kernel computed (a transpose, a cast)
    return None


def matmul_precision(layer: dict, weight: dict) -> str:
    """INT8xINT8, INT4/INT8 weight-only (float activations), or the float type, from a matmul's input and weight."""
    activations = [t["dtype"] for t in layer["inputs"] if t["name"] != weight["name"]] or ["?"]
    activation, kind = activations[0], weight["dtype"]
    if kind == "Int8" and activation == "Int8":
        return "INT8xINT8"
    if kind in INTEGER_TYPES:
        return f"{kind.upper()} weight-only ({activation.lower()} activations)"
    return {"Half": "fp16", "Float": "fp32", "BFloat16": "bf16"}.get(kind, kind.lower())


def precision_summary(layers: list[dict]) -> dict:
    """How many of the graph's weight matmuls (ONNX MatMul / Linear nodes) run in each precision, and how many
    engine layers there are of each type. An ONNX node appears once per optimization profile (and q/k/v fused
    into one gemm are three nodes): counting nodes, not engine layers, gives one count per Linear of the model."""
    producers = {t["name"]: layer for layer in layers for t in layer["outputs"]}
    matmuls: dict[str, int] = {}
    types: dict[str, int] = {}
    seen: set[str] = set()
    int8_out = 0
    for layer in layers:
        types[layer["type"]] = types.get(layer["type"], 0) + 1
        weight = weight_of(layer, producers)
        if weight is None:
            continue
        nodes = [n for n in layer["onnx_nodes"] if _WEIGHT_NODE.match(n)] or [layer["name"]]
        fresh = [n for n in nodes if n not in seen]
        seen.update(nodes)
        if fresh:
            precision = matmul_precision(layer, weight)
            matmuls[precision] = matmuls.get(precision, 0) + len(fresh)
            int8_out += len(fresh) if [t["dtype"] for t in layer["outputs"]][:1] == ["Int8"] else 0
    # int8_out_matmuls: GEMMs whose result leaves the kernel as INT8 (INT8 in *and* out)
    return {"layers": len(layers), "layer_types": types, "matmuls": matmuls, "int8_out_matmuls": int8_out}


# The exporter's names for the nodes that multiply by a weight (node_linear_12, node_MatMul_40, node_Gemm_3); the
# Q/DQ nodes the quantize stage adds around them carry module paths and are not counted.
_WEIGHT_NODE = re.compile(r"(node_)?(linear|matmul|gemm)(_\d+)?$", re.IGNORECASE)


def matmul_text(summary: dict | None) -> str:
    """"14 INT8xINT8, 1 INT8 weight-only (...)": a precision summary's matmul counts, for reports."""
    return ", ".join(f"{n} {p}" for p, n in ((summary or {}).get("matmuls") or {}).items())
