"""The sparsity verifier: every module `sparsity.json` claims must really have its pattern.

It reads the saved artifacts, never the in-memory model: the HF checkpoint's safetensors, and the ONNX
initializers. ONNX exporters rename weights (`val_41`) and often fold a transpose into them, so ONNX
weights are matched to modules by content (a hash of W or Wᵀ in the file's dtype), and the N:M groups are
checked along the axis the consuming MatMul/Gemm reduces over, found by walking the graph.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import safe_open

from sparsetrt.artifacts import read_json
from sparsetrt.errors import SparsetrtError
from sparsetrt.layout import SPARSITY_MANIFEST
from sparsetrt.onnx_io import initializer_array, load_onnx
from sparsetrt.prune.settings import parse_pattern


@dataclass
class VerifyResult:
    where: str
    checked: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and self.checked > 0

    def raise_if_failed(self) -> "VerifyResult":
        if not self.ok:
            first = "; ".join(self.failures[:3]) or "no module was checked"
            more = f" (and {len(self.failures) - 3} more)" if len(self.failures) > 3 else ""
            raise SparsetrtError(f"sparsity verification failed on {self.where}: {first}{more}")
        return self

    def to_json(self) -> dict:
        return {"where": self.where, "checked": self.checked, "ok": self.ok, "failures": self.failures}

    def summary(self) -> str:
        return f"OK: {self.checked} modules have their claimed pattern in {self.where}"


def verify_path(path: Path, checkpoint: Path | None = None) -> VerifyResult:
    """`sparsetrt verify`: a pruned checkpoint against its sparsity.json, or an exported .onnx against the
    sparsity.json of the checkpoint it came from. Raises on the first failed claim."""
    path = Path(path)
    if path.suffix == ".onnx":
        if not checkpoint:
            raise SparsetrtError("verifying an .onnx file needs --checkpoint (the pruned checkpoint it was exported from)")
        if not path.is_file():
            raise SparsetrtError(f"{path} does not exist")
        result = verify_onnx(path, load_manifest(Path(checkpoint)), Path(checkpoint))
    else:
        result = verify_checkpoint(path)
    return result.raise_if_failed()


def check_pattern(name: str, weight: np.ndarray, pattern_text: str, axis: int) -> str | None:
    """None when `weight` has the pattern along `axis` (the input/reduction axis), else why not."""
    pattern = parse_pattern(pattern_text)
    w = np.moveaxis(np.asarray(weight), axis, -1)
    if pattern.is_nm:
        if w.shape[-1] % pattern.m:
            return f"{name}: {w.shape[-1]} inputs are not divisible by M={pattern.m}"
        nonzeros = (w.reshape(w.shape[0], -1, pattern.m) != 0).sum(-1)
        bad = int((nonzeros > pattern.n).sum())
        if bad:
            return f"{name}: {bad} of {nonzeros.size} groups have more than {pattern.n} non-zeros in {pattern.m}"
        return None
    # SparseGPT rounds the count per block of columns, Wanda/magnitude per row: allow one weight per row short
    zeros = float((w == 0).mean())
    if zeros + 1.0 / w.shape[-1] < pattern.ratio:
        return f"{name}: zero fraction {zeros:.4f} is below the claimed {pattern.ratio:g}"
    return None


def load_manifest(directory: Path) -> dict:
    path = Path(directory) / SPARSITY_MANIFEST
    if not path.is_file():
        raise SparsetrtError(f"{directory} has no {SPARSITY_MANIFEST}; pass a directory written by `sparsetrt prune`")
    manifest = read_json(path)
    if not isinstance(manifest.get("modules"), dict) or not manifest["modules"]:
        raise SparsetrtError(f"{path} lists no modules; it is not a sparsetrt pruning manifest")
    return manifest


def iter_checkpoint_weights(checkpoint: Path, names):
    """(module, fp32 array) for each `<module>.weight` in a checkpoint's safetensors files (sharded or not), one at
    a time: an 8B checkpoint is checked without holding it."""
    wanted = {f"{n}.weight": n for n in names}
    files = sorted(Path(checkpoint).glob("*.safetensors"))
    if not files:
        raise SparsetrtError(f"{checkpoint} has no .safetensors files to verify")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key in wanted:
                    yield wanted[key], f.get_tensor(key).float().numpy()


def verify_checkpoint(checkpoint: Path, manifest: dict | None = None) -> VerifyResult:
    manifest = manifest or load_manifest(checkpoint)
    modules = manifest["modules"]
    result = VerifyResult(where=f"checkpoint {checkpoint}")
    seen = set()
    for name, weight in iter_checkpoint_weights(checkpoint, modules):
        seen.add(name)
        result.checked += 1
        if problem := check_pattern(name, weight, modules[name]["pattern"], axis=1):  # HF Linear: (out, in)
            result.failures.append(problem)
    result.failures += [f"{name}: weight missing from the checkpoint" for name in modules if name not in seen]
    return result


def verify_onnx(onnx_path: Path, manifest: dict, checkpoint: Path) -> VerifyResult:
    """Check the claimed pattern on the ONNX initializers that carry each pruned module's weight.

    Streams both sides: one checkpoint weight and one initializer in memory at a time (an 8B model's ONNX is
    16 GB in fp16), matched by digest; the checkpoint is hashed once per dtype the initializers have."""
    onnx_path = Path(onnx_path)
    graph = load_onnx(onnx_path).graph  # the graph only; weights are read one by one
    modules = manifest["modules"]
    result = VerifyResult(where=f"ONNX {onnx_path}")

    def read(init):
        return initializer_array(init, onnx_path.parent)

    matrices = {init.name: init for init in graph.initializer if len(init.dims) == 2}
    by_hash: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    hashed = set()
    located: dict[str, tuple[str, bool]] = {}
    for init_name, init in matrices.items():
        array = read(init)
        if array.dtype not in hashed:
            hashed.add(array.dtype)
            for name, w in iter_checkpoint_weights(checkpoint, modules):
                by_hash[digest(w.astype(array.dtype))].append((name, False))
                by_hash[digest(w.T.astype(array.dtype))].append((name, True))
        for module, transposed in by_hash.get(digest(array), []):
            located.setdefault(module, (init_name, transposed))
    consumers = consumers_of(graph)
    for module, info in modules.items():
        if module not in located:
            result.failures.append(f"{module}: no ONNX initializer holds this weight (renamed, fused or altered by "
                                   "the exporter?)")
            continue
        init_name, transposed = located[module]
        array = read(matrices[init_name])
        input_axis = 0 if transposed else 1  # where the Linear's in_features lie in this initializer
        axes = reduction_axes(init_name, consumers)
        result.checked += 1
        if axes != {input_axis}:
            result.failures.append(
                f"{module} ({init_name}): consumed with reduction axis {sorted(axes) or 'unknown'}, "
                f"expected {input_axis}; sparse tensor cores need the pattern along the reduction axis"
            )
            continue
        if problem := check_pattern(f"{module} ({init_name})", array, info["pattern"], axis=input_axis):
            result.failures.append(problem)
    return result


def digest(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    return digest_of_rows([a], a.shape, a.dtype)


def digest_of_rows(chunks, shape, dtype) -> str:
    """digest() of the array whose consecutive row chunks (C order) `chunks` yields, without ever holding it:
    the same hash, fed piece by piece (hashed through the buffer protocol: no bytes copy)."""
    h = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        h.update(memoryview(np.ascontiguousarray(chunk)).cast("B"))
    return h.hexdigest() + str(tuple(shape)) + np.dtype(dtype).str


def consumers_of(graph) -> dict[str, list]:
    out = defaultdict(list)
    for node in graph.node:
        for index, name in enumerate(node.input):
            out[name].append((node, index))
    return out


def reduction_axes(tensor: str, consumers, flipped: bool = False, depth: int = 0) -> set[int]:
    """The axes of a 2-D initializer that its matmul consumers reduce over (through Transpose/Cast)."""
    axes: set[int] = set()
    if depth > 8:
        return {-1}
    for node, index in consumers.get(tensor, []):
        attrs = {a.name: a for a in node.attribute}
        if node.op_type in ("Cast", "Identity", "DequantizeLinear", "QuantizeLinear") and index == 0:
            axes |= reduction_axes(node.output[0], consumers, flipped, depth + 1)
            continue
        if node.op_type == "Transpose":
            perm = list(attrs["perm"].ints) if "perm" in attrs else [1, 0]
            axes |= reduction_axes(node.output[0], consumers, flipped ^ (perm == [1, 0]), depth + 1)
            continue
        if node.op_type == "MatMul":
            axis = 0 if index == 1 else 1
        elif node.op_type == "Gemm" and index in (0, 1):
            trans = attrs[("transA", "transB")[index]].i if ("transA", "transB")[index] in attrs else 0
            axis = (1 if index == 0 else 0) ^ trans
        else:
            axes.add(-1)  # consumed by something that is not a matmul: cannot vouch for the layout
            continue
        axes.add(axis ^ 1 if flipped else axis)
    return axes
