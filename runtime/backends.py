"""One small runner per backend, Polygraphy-style: construct, then `logits(input_ids, attention_mask)`.

Heavy libraries are imported when a runner is built, not when this module is imported. The TensorRT runner
lives behind the build/ seam (sparsetrt.build) and follows the same interface.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class TorchRunner:
    """The PyTorch reference (CPU, eager, fp32 unless told otherwise)."""

    backend = "pytorch"

    def __init__(self, model, tokenizer=None):
        self.model = model.eval()
        self.tokenizer = tokenizer

    @classmethod
    def from_checkpoint(cls, checkpoint: Path, dtype: str = "float32") -> "TorchRunner":
        from sparsetrt.models import load_model

        return cls(*load_model(Path(checkpoint), dtype=dtype))

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        import torch

        ids = torch.as_tensor(input_ids, dtype=torch.long)
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask, dtype=torch.long)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return out.float().numpy()


class OnnxRuntimeRunner:
    """ONNX Runtime on the CPU (or the first of `providers` that is installed)."""

    backend = "onnxruntime"

    def __init__(self, onnx_path: Path, providers=("CPUExecutionProvider",), threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # ORT fuses DequantizeLinear(int4, blocked) + MatMul into its MatMulNBits kernel, which by default
        # quantizes activations to int8 (accuracy level 4): ~0.5 % error that the ONNX graph does not ask
        # for. Level 1 keeps float activations, so ORT computes what the file (and TensorRT) specifies.
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
        if threads:
            options.intra_op_num_threads = threads
        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(onnx_path), options, providers=chosen)
        self.input_names = {i.name for i in self.session.get_inputs()}

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        feeds = {"input_ids": np.asarray(input_ids, dtype=np.int64)}
        if "attention_mask" in self.input_names:
            mask = np.ones_like(feeds["input_ids"]) if attention_mask is None else attention_mask
            feeds["attention_mask"] = np.asarray(mask, dtype=np.int64)
        return self.session.run(["logits"], feeds)[0].astype(np.float32, copy=False)
