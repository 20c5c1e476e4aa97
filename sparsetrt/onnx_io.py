"""Reading an ONNX file, with one clear error for a truncated, missing or non-ONNX file (protobuf's DecodeError
and onnx's external-data errors otherwise surface as tracebacks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from sparsetrt.errors import SparsetrtError

# dtypes whose external bytes are the array as numpy holds it (INT4 and friends are packed: onnx unpacks them)
PLAIN_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")


def initializer_array(tensor, base_dir: str | Path):
    """One initializer's array, read on its own from the external-data file when it lives there (nothing else of
    the file is loaded), else from the proto: what numpy_helper.to_array gives for the fully loaded model."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = {entry.key: entry.value for entry in tensor.external_data}
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    if dtype.name not in PLAIN_DTYPES:
        loaded = TensorProto()
        loaded.CopyFrom(tensor)
        external_data_helper.load_external_data_for_tensor(loaded, str(base_dir))
        return numpy_helper.to_array(loaded)
    count = int(np.prod(tensor.dims, dtype=np.int64))
    data = Path(base_dir) / info["location"]
    if not data.is_file():
        raise SparsetrtError(f"{data} does not exist; re-export the model (or restore its .data file beside it)")
    array = np.fromfile(data, dtype=dtype, count=count, offset=int(info.get("offset", 0)))
    if array.size != count:
        raise SparsetrtError(f"{data} is shorter than its model says ({tensor.name}); re-export it")
    return array.reshape(tuple(tensor.dims))


def load_onnx(path: str | Path, external_data: bool = False):
    """The ModelProto at `path` (with its weights when `external_data`), or a SparsetrtError naming the file."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.onnx"))
        raise SparsetrtError(f"{path} is a directory; pass an .onnx file"
                             + (f" in it ({', '.join(inside[:4])})" if inside else ""))
    if not path.is_file():
        raise SparsetrtError(f"{path} does not exist; pass an .onnx file")
    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # DecodeError (truncated / not ONNX), missing or short external data, ...
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SparsetrtError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {first}); re-export it "
                             "(or restore its .data file beside it)") from None


# The decoder's KV-cache interface: what `sparsetrt export` names its inputs and outputs, and what every runner reads.
def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def decoder_geometry(inputs: dict[str, list]) -> dict:
    """layers / kv_heads / head_dim of an exported decoder, from its inputs' dims ({name: [dim, ...]})."""
    past = [dims for name, dims in inputs.items() if name.startswith("past_key_values.")]
    if not past:
        raise SparsetrtError("the ONNX has no past_key_values inputs: export it with this version of "
                             "`sparsetrt export` (decoder with KV cache)")
    return {"layers": len(past) // 2, "kv_heads": past[0][1], "head_dim": past[0][3]}
