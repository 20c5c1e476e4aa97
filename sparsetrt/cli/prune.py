"""The prune room: `sparsetrt prune`, `sparsetrt shrink`, `sparsetrt verify`, `sparsetrt distill`."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.cli import Command
from sparsetrt.layout import ArtifactsTree
from sparsetrt.lazy import lazy_import
from sparsetrt.prune.settings import DistillSettings, PruneSettings, ShrinkSettings
from sparsetrt.settings import Output, Progress, RemoteCode, Settings, option

checks = lazy_import("sparsetrt.pipeline.checks")
distill_stage = lazy_import("sparsetrt.prune.distill_stage")
prune_stage = lazy_import("sparsetrt.prune.stage")
shrink_stage = lazy_import("sparsetrt.prune.shrink_stage")
verify_stage = lazy_import("sparsetrt.prune.verify")

MODEL_HELP = "checkpoint directory, 'smollm2-135m' (embedded), or a hub id (online only)"


class CheckpointCommand(Settings):
    """What prune and shrink share: a checkpoint in, calibration text, a checkpoint directory out."""

    model: str = option(..., MODEL_HELP, min_length=1)
    code: RemoteCode = option(RemoteCode, "model code")
    calibration: CalibrationSettings = option(CalibrationSettings, "calibration")
    output: Output = option(..., "output")
    progress: Progress = option(Progress, "progress")


class PruneCommand(CheckpointCommand):
    prune: PruneSettings = option(PruneSettings, "pruning")


def prune(s: PruneCommand) -> int:
    manifest = prune_stage.prune_checkpoint(s.model, s.output.out, s.prune, s.calibration,
                                            overwrite=s.output.overwrite, trust_remote_code=s.code.trust_remote_code,
                                            progress=s.progress.progress)
    print(prune_stage.summary_line(manifest, s.output.out))
    return 0


def check_prune(s: PruneCommand) -> list[str]:
    return checks.check_calibrating_stage("prune", s.model, s.output, s.calibration, s.code.trust_remote_code,
                                          device=s.prune.device, calibrates=s.prune.method != "magnitude"
                                          or s.prune.schedule.mode != "uniform")


class ShrinkCommand(CheckpointCommand):
    shrink: ShrinkSettings = option(ShrinkSettings, "sizes")


def shrink(s: ShrinkCommand) -> int:
    manifest = shrink_stage.shrink_checkpoint(s.model, s.output.out, s.shrink, s.calibration,
                                              overwrite=s.output.overwrite, trust_remote_code=s.code.trust_remote_code,
                                              progress=s.progress.progress)
    print(shrink_stage.summary_line(manifest, s.output.out))
    return 0


def check_shrink(s: ShrinkCommand) -> list[str]:
    return checks.check_calibrating_stage("shrink", s.model, s.output, s.calibration, s.code.trust_remote_code,
                                          device=s.shrink.device, shrink=s.shrink)


class VerifyCommand(Settings):
    path: str = option(..., "pruned checkpoint directory, or an .onnx file (then pass --checkpoint)",
                       style="positional", min_length=1)
    checkpoint: str | None = option(None, "with an .onnx file: the pruned checkpoint it came from", min_length=1)


def verify(s: VerifyCommand) -> int:
    print(verify_stage.verify_path(Path(s.path), s.checkpoint).summary())
    return 0


class DistillCommand(Settings):
    teacher: str = option(..., "the dense checkpoint the student was pruned from ('smollm2-135m' ok)", min_length=1)
    code: RemoteCode = option(RemoteCode, "model code")
    student: str = option(..., "pruned checkpoint directory (with sparsity.json), or an artifacts directory (its "
                               "pruned/)", min_length=1)
    data: str = option("auto", "training text: file, .txt directory, JSONL, or auto (calibration split; the "
                               "evaluation split is refused)", min_length=1)
    distill: DistillSettings = option(DistillSettings, "training")
    stream_teacher: bool = option(False, "keep the teacher in its checkpoint (safetensors), read block by block at "
                                         "every forward: its memory saved for a read of it per micro-batch; the "
                                         "same losses and student")
    output: Output = option(..., "output")
    progress: Progress = option(Progress, "progress")


def distill(s: DistillCommand) -> int:
    student = ArtifactsTree(s.student)
    student = student.pruned if student.pruned.is_dir() else Path(s.student)
    m = distill_stage.distill_checkpoint(s.teacher, student, s.output.out, data=s.data, settings=s.distill,
                                         overwrite=s.output.overwrite, progress=s.progress.progress,
                                         stream_teacher=s.stream_teacher)
    print(distill_stage.summary_line(m, s.output.out))
    return 0


COMMANDS = [
    Command("prune", "prune a checkpoint (N:M or unstructured) and write sparsity.json", PruneCommand, prune,
            check_prune),
    Command("shrink", "structured pruning: remove MLP channels, heads, KV groups or blocks into a smaller dense "
                      "checkpoint (structure.json)", ShrinkCommand, shrink, check_shrink),
    Command("verify", "check the sparsity pattern a sparsity.json claims", VerifyCommand, verify),
    Command("distill", "recover a pruned model by distilling the dense one into it, masks held fixed",
            DistillCommand, distill),
]
