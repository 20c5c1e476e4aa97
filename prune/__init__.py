"""Pruning: N:M and unstructured masks (masks.py), the per-layer algorithms (magnitude, wanda, sparsegpt), the
layer-by-layer driver (sequential.py), schedules, structured shrinking, distillation; each stage's orchestration
in *_stage.py and every option in settings.py (light: no torch)."""
