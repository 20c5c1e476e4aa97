"""sparsetrt: 2:4-sparse LLM deployment — calibrate, prune, export ONNX, build TensorRT engines, prove parity.

Stages live in sibling folders installed as subpackages: sparsetrt.calibration, sparsetrt.prune,
sparsetrt.export, sparsetrt.build, sparsetrt.runtime. This core holds what they share: model sources,
output directories with manifests, the config file, the pipeline and the CLI.
"""

from sparsetrt.errors import SparsetrtError

__version__ = "0.1.0"
__all__ = ["SparsetrtError", "__version__"]
