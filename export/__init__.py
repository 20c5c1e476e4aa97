"""Export: ONNX decoders with KV cache, quantization that keeps the zeros (Q/DQ INT8, blocked INT4), lint against
the TensorRT parser, TensorRT-LLM checkpoints. Heavy modules import torch; this package file stays light."""

