"""What every runner shares: the decoder interface, position ids, and the graph runner both exported-graph
backends (ONNX Runtime, TensorRT) build on.

Every runner speaks the exported decoder's interface (sparsetrt.export.onnx_export):
  step(input_ids, attention_mask, position_ids, cache) -> (logits of the last position [batch, vocab], cache)
  empty_cache(batch)                                    -> the cache a prefill starts from (past length 0)
  logits(input_ids, attention_mask)                     -> logits of every position (parity, perplexity)
  prefill(input_ids, attention_mask)                    -> (logits of every position, cache): the adaptive probe
The cache is whatever the backend keeps between steps (numpy arrays, torch tensors on the GPU, a DynamicCache).
"""

from __future__ import annotations

import numpy as np


def position_ids_for(attention_mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """Positions of the last `new_tokens` columns: count of real tokens before each one (left padding
    gets no position of its own, as in transformers' generate)."""
    positions = np.cumsum(attention_mask, axis=1) - 1
    return np.maximum(positions[:, -new_tokens:], 0).astype(np.int64)


class GraphRunner:
    """Shared by the runners of the exported graph (ONNX Runtime, TensorRT): named inputs in, named outputs out.
    Subclasses provide `_run(feeds) -> outputs` and `_empty(shape)` in their own array type."""

    def __init__(self, graph: dict):
        from sparsetrt.export.onnx_export import past_names, present_names

        self.graph = graph
        self.past_names = past_names(graph["layers"])
        self.present_names = present_names(graph["layers"])

    def empty_cache(self, batch: int):
        shape = (batch, self.graph["kv_heads"], 0, self.graph["head_dim"])
        return [self._empty(shape) for _ in self.past_names]

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        feeds = {"input_ids": self._ids(input_ids), "attention_mask": self._ids(attention_mask),
                 "position_ids": self._ids(position_ids), **dict(zip(self.past_names, cache))}
        outputs = self._run(feeds)
        return outputs["logits"], [outputs[name] for name in self.present_names]

    def step(self, input_ids, attention_mask, position_ids, cache):
        logits, cache = self._forward(input_ids, attention_mask, position_ids, cache)
        return self._to_numpy(logits[:, -1]), cache

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        return self.prefill(input_ids, attention_mask)[0]

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None):
        """(logits of every position [batch, seq, vocab], cache to decode on from)."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        logits, cache = self._forward(input_ids, mask, position_ids_for(mask, input_ids.shape[1]),
                                      self.empty_cache(input_ids.shape[0]))
        return self._to_numpy(logits), cache

    def synchronize(self) -> None:
        pass


def graph_interface(graph) -> dict:
    """Layers, KV heads and head size of an exported decoder (an ONNX GraphProto), read from its inputs."""
    from sparsetrt.export.onnx_export import decoder_geometry

    return decoder_geometry({i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
                             for i in graph.input})
