"""Deployables made on demand, like the pipeline's own: the dense baseline and shrunk variants exported and
quantized with the settings of the 2:4 runs of an artifacts tree (so the two differ only by the pruning), each
quantized file with its parity check.

  prepare_dense       the dense source of a tree's pruned model, into its dense/ tree
  prepare_like_runs   the same for any checkpoint (a shrunk variant) into a tree of its own
"""

from __future__ import annotations

from pathlib import Path

from sparsetrt.artifacts import read_json
from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.export.ort_target import OrtTargetOptions
from sparsetrt.export.quant_stage import quantize_checkpoint
from sparsetrt.export.settings import EvaluationSettings, ExportSettings, QuantizeSettings
from sparsetrt.export.stage import export_checkpoint
from sparsetrt.layout import EXPORT_MANIFEST, FLOAT_PRECISIONS, QUANT_MANIFEST, QUANT_PRECISIONS, ArtifactsTree
from sparsetrt.runtime.parity.quantized import quantized_parity


def prepare_dense(artifacts: Path, progress: bool = True) -> Path:
    """The dense baseline's deployables in artifacts/dense/: the source checkpoint exported and quantized with the
    settings of the 2:4 runs (artifacts/int8, artifacts/int4), so dense and 2:4 differ only by the pruning."""
    tree = ArtifactsTree(artifacts)
    prepare_like_runs(tree.dense_checkpoint(), tree.dense, tree, progress=progress)
    return tree.dense.root


def prepare_like_runs(source: Path, files: ArtifactsTree, runs: ArtifactsTree, floats=FLOAT_PRECISIONS,
                      precisions=QUANT_PRECISIONS, progress: bool = True) -> list[str]:
    """`source` (any checkpoint of the same tokenizer: the dense model, a shrunk one) exported into files/onnx/ and
    quantized into files/<precision>/ with the settings the 2:4 runs under `runs` used (each quantized precision
    only where such a run exists). Finished files are reused. Returns the precisions now under `files`."""
    exported = runs.onnx_dir / EXPORT_MANIFEST
    export_targets = read_json(exported)["settings"].get("targets", ["tensorrt"]) if exported.is_file() else ["tensorrt"]
    # these trees are derived from the runs: one made with other settings is replaced, an identical one reused
    export_checkpoint(source, files.onnx_dir, ExportSettings(precisions=list(floats), targets=export_targets),
                      reuse=True, overwrite=True)
    done = list(floats)
    for precision in precisions:
        manifest = runs.quant_dir(precision) / QUANT_MANIFEST
        if not manifest.is_file():
            continue
        run = read_json(manifest)["settings"]
        ort = OrtTargetOptions(**run["ort"]) if run.get("ort") else None
        settings = QuantizeSettings(**run["quant"], tp=[], targets=run.get("targets", ["tensorrt"]),
                                    **({"ort_compute": ort.nbits_compute} if ort else {}))
        calibration = CalibrationSettings(corpus=run["calib"], samples=run["calib_samples"],
                                          seq_len=run["calib_seq_len"], seed=run["seed"])
        evaluation = EvaluationSettings(**run["parity"]) if run.get("parity") else None
        quantize_checkpoint(source, files.onnx_dir, files.quant_dir(precision), settings, calibration, evaluation,
                            quantized_parity, reuse=True, overwrite=True, progress=progress, ort_options=ort)
        done.append(precision)
    return done
