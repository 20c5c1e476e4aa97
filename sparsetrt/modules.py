"""Module discovery in a decoder-only LM: its block list and the Linears inside the blocks, found the same way by
every stage that walks a model (pruning, quantization, streaming, export checks)."""

from __future__ import annotations

import fnmatch

import torch

from sparsetrt.errors import SparsetrtError


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of decoder blocks (model.model.layers for Llama, Mistral, Qwen2 and most others)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, torch.nn.ModuleList):
        return layers
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise SparsetrtError(f"cannot find the decoder layers of {type(model).__name__}; sparsetrt supports Llama-family layouts")


def layers_prefix(model: torch.nn.Module) -> str:
    """The module name of `model`'s decoder block list (e.g. "model.layers"): block k's tensors are "<prefix>.k.*"."""
    layers = decoder_layers(model)
    return next(name for name, module in model.named_modules() if module is layers)


def target_linears(model: torch.nn.Module, targets=("*",), exclude=()) -> dict[str, torch.nn.Linear]:
    """Linears inside the decoder blocks whose full names match `targets` and none of `exclude`.

    Embeddings and lm_head live outside the blocks and are never candidates.
    """
    layers = decoder_layers(model)
    prefix = layers_prefix(model)
    found = {}
    for name, module in layers.named_modules():
        full = f"{prefix}.{name}"
        if isinstance(module, torch.nn.Linear) and matches(full, targets) and not matches(full, exclude):
            found[full] = module
    return found


def matches(name: str, patterns) -> bool:
    """Whether a module name (or the name without its first component) matches one of the glob patterns."""
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name.split(".", 1)[-1], p) for p in patterns)
