"""Reading an ONNX file, with one clear error for a truncated, missing or non-ONNX file (protobuf's DecodeError
and onnx's external-data errors otherwise surface as tracebacks)."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.errors import SparsetrtError


def load_onnx(path: str | Path, external_data: bool = False):
    """The ModelProto at `path` (with its weights when `external_data`), or a SparsetrtError naming the file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise SparsetrtError(f"{path} does not exist; pass an .onnx file")
    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # DecodeError (truncated / not ONNX), missing or short external data, ...
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SparsetrtError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {first}); re-export it "
                             "(or restore its .data file beside it)") from None
