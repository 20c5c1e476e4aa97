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

from sparsetrt.lazy import lazy_import
from sparsetrt.onnx_io import decoder_geometry, past_names, present_names

torch = lazy_import("torch")  # caches on the GPU only: ONNX Runtime's are numpy, and its serving image has no torch


def position_ids_for(attention_mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """Positions of the last `new_tokens` columns: count of real tokens before each one (left padding
    gets no position of its own, as in transformers' generate)."""
    positions = np.cumsum(attention_mask, axis=1) - 1
    return np.maximum(positions[:, -new_tokens:], 0).astype(np.int64)


class GraphRunner:
    """Shared by the runners of the exported graph (ONNX Runtime, TensorRT): named inputs in, named outputs out.
    Subclasses provide `_run(feeds) -> outputs` and `_empty(shape)` in their own array type."""

    def __init__(self, graph: dict):
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
    return decoder_geometry({i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
                             for i in graph.input})


# -- rows of a KV cache: what continuous batching (sparsetrt.runtime.serve.scheduler) does between steps ----------
# A cache is a list of [batch, kv_heads, past, head_dim] arrays (numpy for ONNX Runtime, torch on the GPU for
# TensorRT) or a transformers DynamicCache (PyTorch). Rows are right-aligned: a row's real positions are the last
# ones, the columns before them are left padding that its attention mask zeroes. Padding K/V with zeros is exact:
# a masked position gets exactly zero weight in the softmax, whatever it holds.

def cache_tensors(cache) -> list:
    """The cache's arrays in a fixed order (keys and values of every layer)."""
    if isinstance(cache, list):
        return cache
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


def _with_tensors(cache, tensors: list):
    """`cache` holding `tensors` instead (a list is rebuilt; a DynamicCache's layers are updated in place)."""
    if isinstance(cache, list):
        return tensors
    for layer, keys, values in zip(cache.layers, tensors[::2], tensors[1::2], strict=True):
        layer.keys, layer.values = keys, values
    return cache


def _left_pad(array, columns: int):
    if columns == 0:
        return array
    if isinstance(array, np.ndarray):
        return np.pad(array, ((0, 0), (0, 0), (columns, 0), (0, 0)))

    return torch.nn.functional.pad(array, (0, 0, columns, 0))


def _concat(arrays: list):
    if isinstance(arrays[0], np.ndarray):
        return np.concatenate(arrays, axis=0)

    return torch.cat(arrays, dim=0)


def join_caches(first, first_past: int, second, second_past: int):
    """One cache holding the rows of `first` then those of `second`, the shorter past left-padded to the longer."""
    width = max(first_past, second_past)
    joined = [_concat([_left_pad(a, width - first_past), _left_pad(b, width - second_past)])
              for a, b in zip(cache_tensors(first), cache_tensors(second), strict=True)]
    return _with_tensors(first, joined)


def select_cache_rows(cache, rows: list[int], drop_columns: int = 0):
    """The cache of `rows` only, without its first `drop_columns` past columns (padding no kept row needs)."""
    if isinstance(cache_tensors(cache)[0], np.ndarray):
        index = np.asarray(rows)
    else:
        index = torch.as_tensor(rows, device=cache_tensors(cache)[0].device)
    return _with_tensors(cache, [a[index][:, :, drop_columns:] for a in cache_tensors(cache)])
