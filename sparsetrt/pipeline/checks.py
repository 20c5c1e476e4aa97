"""The checks that need more than a setting's own value — the model's config, this machine's devices, the files a
stage reads and writes — made before any work, and the plan they add up to (`--check` prints it).

The settings models refuse what a value alone tells (types, ranges, rules between fields); what is here needs the
world: sequence lengths against the model's positions, tensor-parallel sizes against its heads, a device against
this machine, a corpus that must exist and be text, an output directory that must be writable. Nothing here writes,
downloads or converts: a model that is not on this machine yet is said to be so, and the checks it would allow wait
for the stage.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from sparsetrt.architectures import allow_remote_code, auto_config, check_length, remote_code
from sparsetrt.artifacts import (
    check_output_dir,
    ensure_writable_parent,
    fingerprint,
    reusable_manifest,
    written_by_sparsetrt,
)
from sparsetrt.build import choose_builder, parse_targets
from sparsetrt.calibration.data import load_corpus
from sparsetrt.devices import resolve_device
from sparsetrt.errors import SparsetrtError
from sparsetrt.layout import (
    EXPORT_MANIFEST,
    PARITY_MANIFEST,
    QUANT_MANIFEST,
    SPARSITY_MANIFEST,
    STRUCTURE_MANIFEST,
    ArtifactsTree,
)
from sparsetrt.lazy import lazy_import
from sparsetrt.models import local_checkpoint, resolve_checkpoint
from sparsetrt.pipeline.config import PipelineConfig, validated

export_stage = lazy_import("sparsetrt.export.stage")
ort_target = lazy_import("sparsetrt.export.ort_target")
qmath = lazy_import("sparsetrt.export.qmath")
parity_stage = lazy_import("sparsetrt.runtime.parity.compare")
prune_stage = lazy_import("sparsetrt.prune.stage")
shrink_math = lazy_import("sparsetrt.prune.shrink")
trtllm = lazy_import("sparsetrt.export.trtllm")

GiB = 1 << 30


@contextlib.contextmanager
def naming(option: str):
    """Put the option as the user wrote it in front of a refusal that does not name it."""
    try:
        yield
    except SparsetrtError as exc:
        text = str(exc)
        raise type(exc)(text if text.startswith(option) else f"{option}: {text}") from None


def model_facts(spec: str, trust_remote_code: bool, option: str) -> tuple[Path | None, dict | None, list[str]]:
    """(checkpoint directory, its config.json, plan lines) of a model spec, without converting or downloading."""
    with naming(option):
        checkpoint = local_checkpoint(spec, trust_remote_code)
    if checkpoint is None:
        return None, None, [f"  model        {spec}: not on this machine yet (converted or downloaded when the run "
                            "starts); the checks that need its config wait for it"]
    config = json.loads((checkpoint / "config.json").read_text())
    weights = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors"))
    bytes_per = {"float32": 4, "float16": 2, "bfloat16": 2}.get(str(config.get("torch_dtype", "float32")), 4)
    fp32 = weights / bytes_per * 4
    return checkpoint, config, [f"  model        {checkpoint} ({config.get('model_type')}, {weights / GiB:.2f} GiB of "
                                f"weights; about {fp32 / GiB:.2f} GiB in fp32, what a whole-model stage holds, plus "
                                "one block's statistics; streaming holds one block)"]


def describe_corpus(spec: str, split: str, option: str) -> str:
    """Read the text (a missing file, a directory without .txt, bytes that are not UTF-8 are refused now)."""
    with naming(option):
        return load_corpus(spec, split).description


def check_device(device: str, option: str) -> str:
    return resolve_device(device, option)


def check_output(out: Path, option: str = "--out") -> None:
    with naming(option):
        ensure_writable_parent(out)
        if out.exists() and not out.is_dir():
            raise SparsetrtError(f"{out} exists and is not a directory; choose another {option}")


# -- a stage command's checks -------------------------------------------------------------------------------------

def output_plan(out: Path, manifest: str, stage: str, overwrite: bool) -> str:
    """The plan's line for a stage command's --out: refused now where the run would refuse it (a file, an
    unwritable parent, files sparsetrt did not write, another stage's output); a run of the same stage there is
    replaced when identical, else refused without --overwrite (which the settings decide, known when it runs)."""
    check_output(out)
    previous = read_manifest(out / manifest)
    if previous.get("stage") == stage and not overwrite:
        return f"  writes       {out} (it holds a {stage} run: reused when identical, else refused without --overwrite)"
    with naming("--out"):
        check_output_dir(out, manifest, stage, "", overwrite)
    return f"  writes       {out}"


def read_manifest(path: Path) -> dict:
    """A stage manifest's content, {} where there is none to read."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_stage_input(stage: str, model: str, output, trust_remote_code: bool) -> list[str]:
    """`sparsetrt export --check`: the checkpoint and the output directory."""
    writes = output_plan(Path(output.out), EXPORT_MANIFEST, stage, output.overwrite)
    _, _, lines = model_facts(model, trust_remote_code, "--model")
    return lines + [writes]


def check_calibrating_stage(stage: str, model: str, output, calibration, trust_remote_code: bool, device: str,
                            calibrates: bool = True, shrink=None, evaluation=None, onnx_dir: str | None = None
                            ) -> list[str]:
    """`prune|shrink|quantize --check`: device, corpus, model positions, output."""
    manifest = {"prune": SPARSITY_MANIFEST, "shrink": STRUCTURE_MANIFEST}.get(stage, QUANT_MANIFEST)
    writes = output_plan(Path(output.out), manifest, stage, output.overwrite)
    lines = [f"  device       {check_device(device, '--device')}"]
    if calibrates:
        lines.append(f"  calibration  {describe_corpus(calibration.corpus, 'valid', '--calib')}, "
                     f"{calibration.samples} x {calibration.seq_len} tokens")
    if evaluation is not None:
        lines.append(f"  parity text  {describe_corpus(evaluation.corpus, 'test', '--corpus')}, "
                     f"{evaluation.windows} x {evaluation.seq_len} tokens")
    if onnx_dir is not None and not (Path(onnx_dir) / EXPORT_MANIFEST).is_file():
        raise SparsetrtError(f"--onnx-dir {onnx_dir} has no {EXPORT_MANIFEST}; pass the directory written by "
                             "`sparsetrt export`")
    checkpoint, config, model_lines = model_facts(model, trust_remote_code, "--model")
    if config is not None:
        if calibrates:
            check_length(config, calibration.seq_len, "a calibration window", "--calib-seq-len")
        if evaluation is not None:
            check_length(config, evaluation.seq_len, "a parity window", "--seq-len")
        if shrink is not None:
            shrink_math.plan(auto_config(checkpoint), shrink)
    return model_lines + lines + [writes]


def check_parity_inputs(model, onnx_dir: Path, output, settings) -> list[str]:
    """`parity --check`: the export it compares, the text, the window against the exported positions."""
    writes = output_plan(Path(output.out), PARITY_MANIFEST, "parity", output.overwrite)
    if not (Path(onnx_dir) / EXPORT_MANIFEST).is_file():
        raise SparsetrtError(f"{onnx_dir} has no {EXPORT_MANIFEST}; pass --onnx-dir (or --artifacts) with what "
                             "`sparsetrt export` wrote")
    export = json.loads((Path(onnx_dir) / EXPORT_MANIFEST).read_text())
    check_length({"max_position_embeddings": export.get("graph", {}).get("max_positions")}, settings.seq_len,
                 "a parity window", "--seq-len")
    _, _, lines = model_facts(str(model), False, "--model")
    return lines + [f"  parity text  {describe_corpus(settings.corpus, 'test', '--corpus')}",
                    f"  compares     {', '.join(export.get('files', {}))} ONNX files in {onnx_dir}", writes]


def check_engine_plan(onnx: Path, out: Path, options, overwrite: bool) -> list[str]:
    """`build --check`: the builder and targets this machine can use, the output directory."""
    check_output(Path(out))
    with naming("--builder"):
        flavour = choose_builder(options.builder)
    with naming("--target"):
        targets = parse_targets(flavour, options.targets)
    return [f"  builds       {onnx} with {flavour} for {', '.join(targets)}", f"  writes       {out}"]


# -- the run's plan -----------------------------------------------------------------------------------------------

def check_artifacts_dir(out: Path, manifest_name: str, run_fingerprint: str, overwrite: bool) -> None:
    """Refuse a directory sparsetrt did not write, or one holding a different run of this kind (unless
    overwrite); float and quantized runs keep separate run manifests and share the stage directories."""
    if out.exists() and not out.is_dir():
        raise SparsetrtError(f"output path {out} exists and is not a directory; choose another --out")
    if not out.exists() or overwrite or not any(out.iterdir()):
        return
    # What sparsetrt itself wrote may stay: the stages of an interrupted run (no run*.json yet) and other runs'
    # trees inside this one (`make test` leaves the parity gate's artifacts/ci before `make demo` writes artifacts/).
    foreign = [] if any(out.glob("run*.json")) else sorted(e.name for e in out.iterdir() if not written_by_sparsetrt(e))
    if foreign:
        raise SparsetrtError(f"output directory {out} already holds files that sparsetrt did not write "
                             f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); pass --overwrite to "
                             "replace it or choose another --out")
    if (out / manifest_name).is_file():
        check_output_dir(out, manifest_name, "run", run_fingerprint, overwrite)


def check_plan(config: PipelineConfig, overwrite: bool, convert: bool = True) -> list[str]:
    """Everything `sparsetrt run` can know before its first stage, checked; the plan as lines. `convert`: the
    embedded model may be converted (the run itself); without it (--check) a model not yet on this machine is
    said to be so."""
    config = validated(config)
    allow_remote_code(remote_code(config.model.trust_remote_code))  # [model] decides for every stage of the run
    out = Path(config.out)
    tree = ArtifactsTree(out)
    precision = config.quantize.precision
    manifest_name, run_fingerprint = config.run_manifest(), fingerprint(config.to_dict())
    check_output(out, "out")
    check_artifacts_dir(out, manifest_name, run_fingerprint, overwrite)
    lines = [f"  run          {manifest_name} in {out}, fingerprint {run_fingerprint}"]
    if reusable_manifest(out, manifest_name, "run", run_fingerprint):
        lines.append("  reuse        an identical run finished there: every stage is reused")

    calibrates = (config.shrink.enabled() or config.prune.method != "magnitude" or config.prune.schedule.mode
                  != "uniform" or precision != "none")
    devices = [("[prune] device", config.prune.device)]
    if config.shrink.enabled():
        devices.append(("[shrink] device", config.shrink.device))
    if precision != "none" and config.quantize.device is not None:
        devices.append(("[quantize] device", config.quantize.device))
    for option, device in devices:
        check_device(device, option)
    if calibrates:
        lines.append(f"  calibration  {describe_corpus(config.calibration.corpus, 'valid', '[calibration] corpus')}")
    lines.append(f"  parity text  {describe_corpus(config.parity.corpus, 'test', '[parity] corpus')}")
    if config.build.precisions:
        with naming("[build] builder"):
            flavour = choose_builder(config.build.builder)
        with naming("[build] targets"):
            parse_targets(flavour, config.build.targets)

    if convert:  # the run itself: convert the embedded model now (once; cached), or fetch a hub id
        with naming("[model] source"):
            resolve_checkpoint(config.model.source, config.model.trust_remote_code)
    checkpoint, model_config, model_lines = model_facts(config.model.source, config.model.trust_remote_code,
                                                        "[model] source")
    lines[1:1] = model_lines
    if model_config is not None:
        _check_against_model(config, checkpoint, model_config, calibrates)
    lines += _stage_lines(config, tree, checkpoint)
    return lines


def _check_against_model(config: PipelineConfig, checkpoint: Path, model_config: dict, calibrates: bool) -> None:
    """Sequence lengths against the positions, sizes and splits against the shapes, the targets against the
    family."""
    if calibrates:
        check_length(model_config, config.calibration.seq_len, "a calibration window", "[calibration] seq_len")
    check_length(model_config, config.parity.seq_len, "a parity window", "[parity] seq_len")
    hf_config = auto_config(checkpoint, config.model.trust_remote_code)
    if config.shrink.enabled():
        with naming("[shrink]"):
            shrink_math.plan(hf_config, config.shrink)
        return  # the rest is about the shrunk model, which does not exist yet
    precision = config.quantize.precision
    if "onnxruntime" in config.export.targets:
        with naming("[export] targets"):
            ort_target.check_supported(hf_config, "fp32")
    if precision != "none":
        if "onnxruntime" in config.quantize.targets:
            with naming("[quantize] targets"):
                ort_target.check_supported(hf_config, precision)
        if config.quantize.tp and trtllm.unsupported_reason(hf_config) is None:
            block = None
            if precision == "int4":
                with naming("[quantize] block_size"):
                    block = qmath.int4_block_size(linear_inputs_gcd(hf_config), config.quantize.block_size,
                                                  config.quantize.block_fallback)
            for tp in config.quantize.tp:
                with naming("[quantize] tp"):
                    trtllm.check_tp(hf_config, tp, precision, block)


def linear_inputs_gcd(hf_config) -> int:
    """The largest size every decoder Linear's input width divides by (the quantize stage's one INT4 block size
    for the whole model comes from it): hidden size, attention width, MLP width."""
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    return math.gcd(hf_config.hidden_size, heads * head_dim, hf_config.intermediate_size)


def _stage_lines(config: PipelineConfig, tree: ArtifactsTree, checkpoint: Path | None) -> list[str]:
    """Each stage and whether an identical finished run is there to reuse (known exactly up to parity: their
    fingerprints follow from the settings; quantize and the engines decide when they start)."""
    lines = []
    source = config.model.source
    if config.shrink.enabled():
        lines.append(f"  shrink       -> {tree.shrunk}")
        source = str(tree.shrunk)
    prune = fingerprint(prune_stage.run_settings_of(source, config.prune, config.calibration))
    pruned = reusable_manifest(tree.pruned, SPARSITY_MANIFEST, "prune", prune)
    lines.append(f"  prune        {config.prune.method} {config.prune.pattern} -> {tree.pruned}"
                 f"{' (reused)' if pruned else ''}")
    export = fingerprint(export_stage.run_settings_of(tree.pruned, prune, config.export))
    exported = pruned and reusable_manifest(tree.onnx_dir, EXPORT_MANIFEST, "export", export)
    lines.append(f"  export       {', '.join(config.export.precisions)}"
                 f"{' + onnxruntime target' if 'onnxruntime' in config.export.targets else ''} -> {tree.onnx_dir}"
                 f"{' (reused)' if exported else ''}")
    parity = fingerprint(parity_stage.run_settings_of(export, config.parity, ()))
    checked = exported and reusable_manifest(tree.parity_dir, PARITY_MANIFEST, "parity", parity)
    lines.append(f"  parity       {config.parity.windows} x {config.parity.seq_len} tokens, "
                 f"{config.parity.generate_tokens} greedy tokens -> {tree.parity_dir}{' (reused)' if checked else ''}")
    if config.quantize.precision != "none":
        lines.append(f"  quantize     {config.quantize.precision} -> {tree.quant_dir(config.quantize.precision)} "
                     "(reused when an identical run is there)")
    for p in config.build.precisions:
        lines.append(f"  engine       {p} -> {tree.engine_dir(p)} (reused when an identical build is there)")
    return lines
