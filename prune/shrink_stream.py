"""`sparsetrt shrink --stream`: structured pruning of a checkpoint whose weights never all sit in memory.

Two passes over the decoder blocks, each block read from the checkpoint (prune/streaming.py) and dropped after:
1. scoring: the calibration windows' hidden states are captured at block 0 (only the embedding is real then) and
   carried from block to block; each block runs once on them with the statistics hooks of the in-memory path
   (activation sums of squares, block influence) and picks its own channels and heads while it is in memory;
2. slicing: each kept block is read again, cut (shrink.sliced_block) and written as a shard of the output; what lies
   outside the blocks is copied tensor by tensor.
The in-memory path runs the whole model on the same batches, so block k sees the same inputs: both write the same
tensors (tests/test_shrink.py compares them). Taylor scores (gradients through the whole model) and depth by loss
(the whole model's loss with each block skipped) are refused under --stream.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sparsetrt.checkpoint import load_module
from sparsetrt.errors import SparsetrtError
from sparsetrt.prune import shrink
from sparsetrt.prune.sequential import capture_first_layer_inputs, layer_output, progress_bar, to_device
from sparsetrt.prune.streaming import StreamedModel


def check_streamable(settings: shrink.ShrinkSettings, removes_layers: bool) -> None:
    if settings.importance == "taylor":
        raise SparsetrtError("--importance taylor needs gradients through the whole model; use activation or "
                             "magnitude with --stream, or run without --stream")
    if removes_layers and settings.depth_importance == "loss":
        raise SparsetrtError("--depth-importance loss runs the whole model once per block; use cosine with --stream, "
                             "or run without --stream")


def choose_streamed(streamed: StreamedModel, windows: torch.Tensor, settings: shrink.ShrinkSettings, p: shrink.Plan,
                    needs_data: bool, batch: int = 4, progress: bool = True) -> tuple[dict, dict]:
    """(stats, choice) as shrink.gather + shrink.choose make them in memory, one block at a time."""
    config, layers = streamed.model.config, streamed.layers
    stats = shrink.empty_stats(len(layers))
    cached = []
    with torch.no_grad():
        if needs_data:
            cached = to_device(capture_first_layer_inputs(streamed.model, layers, windows, batch), streamed.device)
        streamed.embedding.to("meta")
        per_layer = {}
        bar = progress_bar(len(layers), "shrink: scoring", progress)
        for i, layer in enumerate(layers):
            load_module(layer, f"{streamed.layers_prefix}.{i}", streamed.reader, streamed.dtype, streamed.device)
            handles = shrink.stat_hooks(layer, i, stats, config.hidden_size)
            try:
                cached = [(layer_output(layer(hidden, **kwargs)), kwargs) for hidden, kwargs in cached]
            finally:
                for handle in handles:
                    handle.remove()
            per_layer[i] = shrink.layer_choice(layer, i, stats, settings, p, config)
            layer.to("meta")
            bar.update(1)
        bar.close()
    if not needs_data:  # magnitude scores at full depth: no forward ran, no statistics (as in memory)
        return {}, shrink.assemble(list(range(len(layers))), per_layer)
    stats["influence"] = [v / len(cached) for v in stats["influence"]]
    return stats, shrink.assemble(shrink.kept_layers(stats, settings, p, len(layers)), per_layer)


def write_shrunk_streamed(streamed: StreamedModel, choice: dict, p: shrink.Plan, out: Path,
                          progress: bool = True):
    """Write the shrunk checkpoint into `out` shard by shard; returns its config."""
    reader, dtype = streamed.reader, streamed.dtype
    writer = streamed.writer_for(out, len(choice["layers"]))
    bar = progress_bar(len(choice["layers"]), "shrink: slicing", progress)
    for new, old in enumerate(choice["layers"]):
        prefix = f"{streamed.layers_prefix}.{old}."
        block = {name[len(prefix):]: reader.get(name, dtype) for name in reader.names() if name.startswith(prefix)}
        sliced = shrink.sliced_block(block, choice, old, p.head_dim)
        del block
        writer.write({f"{streamed.layers_prefix}.{new}.{rest}": t for rest, t in sliced.items()})
        bar.update(1)
    bar.close()
    config = shrink.shrunk_config(streamed.model.config, p, choice["layers"])
    streamed.finish(out, config)
    return config
