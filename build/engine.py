"""TensorRT engines from our ONNX decoders, through Polygraphy's API, in two flavours (sparsetrt.build): TensorRT
proper (in this process, on the GPU it builds for) and TensorRT-RTX (ahead of time, no GPU needed, in a process
of its own: sparsetrt.build.rtx). The only modules that import TensorRT.

  plan_engine(onnx, options)    -> EnginePlan: profiles, precision mode, CreateConfig(RTX) arguments, targets,
                                   trtexec command (pure Python: what we would ask TensorRT for, unit-tested)
  build_engine(onnx, out, opts) -> our lint first, then the build, then beside the engine: engine.json (flavour,
                                   version, targets, flags, profiles, ONNX sha256, seconds, peak RSS, bytes),
                                   layers.json (per-layer precisions), build.log and the sparsity verdict

Precision follows the field's turn (shared/research/field-notes.md): TensorRT 11 and TensorRT-RTX build strongly
typed networks only, so precision comes from the ONNX (fp16 graph, Q/DQ nodes); TensorRT 10 still takes fp16/bf16
builder flags, used only when the user asks for a precision the ONNX does not carry. A Q/DQ graph is always
strongly typed.
"""

from __future__ import annotations

import json
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from sparsetrt.artifacts import file_sha256, prepare_output, staged_dir, write_json
from sparsetrt.build import (
    choose_builder,
    cuda_available,
    installed_tensorrt_version,
    parse_targets,
    tensorrt_status,
)
from sparsetrt.build.layers import matmul_text, parse_layer_dump, precision_summary
from sparsetrt.build.settings import EngineOptions
from sparsetrt.errors import EngineBuildError, SparsetrtError
from sparsetrt.export import lint
from sparsetrt.layout import BUILD_LOG, ENGINE_FILE, ENGINE_MANIFEST, LAYERS_FILE
from sparsetrt.lazy import lazy_import
from sparsetrt.memory import peak_rss_mb
from sparsetrt.onnx_io import decoder_geometry, load_onnx

# TensorRT proper builds in this process (TensorRT-RTX in a child, sparsetrt.build.rtx); both load on first use.
polygraphy_logger = lazy_import("polygraphy.logger")
polygraphy_trt = lazy_import("polygraphy.backend.trt")
tensorrt = lazy_import("tensorrt", "TensorRT proper: pip install tensorrt on a CUDA machine")
torch = lazy_import("torch")  # asked about the GPU only where there is one: the engine-build image has no torch

SPARSE_MIN_SM = (8, 0)  # sparse tensor cores: Ampere and later


@dataclass
class OnnxFacts:
    """What the plan needs to know about the ONNX file (read with `onnx_facts`)."""

    inputs: dict[str, list]          # name -> dims (int, or the symbolic name)
    float_type: str                  # "float32" | "float16" | "bfloat16": type of the logits
    qdq: bool                        # carries QuantizeLinear/DequantizeLinear
    int4: bool = False               # carries INT4 weights (blocked DequantizeLinear)
    sha256: str = ""


@dataclass
class EnginePlan:
    onnx: str
    engine: str
    tensorrt_version: str
    strongly_typed: bool
    flavour: str                     # "tensorrt" | "rtx"
    targets: list[str]               # compute capabilities built for ("sm80", ...)
    precision: str                   # what the engine computes in, in words
    builder_flags: list[str]         # precision flags for TensorRT 10 weakly typed builds
    profiles: list[dict]             # [{"name": phase, "shapes": {input: [min, opt, max]}}]
    create_config: dict              # CreateConfig kwargs, TensorRT enums as their names
    network: dict                    # NetworkFromOnnxPath kwargs
    timing_cache: str | None
    trtexec: list[str] = field(default_factory=list)

    def trtexec_command(self) -> str:
        return " ".join(shlex.quote(a) for a in self.trtexec)


def onnx_facts(path: Path) -> OnnxFacts:
    model = load_onnx(path)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    logits = next((o for o in model.graph.output if o.name == "logits"), model.graph.output[0])
    float_type = onnx.helper.tensor_dtype_to_np_dtype(logits.type.tensor_type.elem_type).name
    ops = {n.op_type for n in model.graph.node}
    int4 = any(i.data_type == onnx.TensorProto.INT4 for i in model.graph.initializer)
    return OnnxFacts(inputs=inputs, float_type=float_type, qdq=bool(ops & {"QuantizeLinear", "DequantizeLinear"}),
                     int4=int4, sha256=file_sha256(path))


def decoder_profiles(inputs: dict[str, list], options: EngineOptions) -> list[dict]:
    """Two optimization profiles over the merged decoder: prefill (whole prompt, empty past) and decode (one token,
    past up to input + output length). Kernels are tuned at each profile's opt shape, so decode, the phase run
    most often, gets kernels picked for a single token instead of for a prompt."""
    b_min, b_opt, b_max = 1, options.opt_batch, options.max_batch
    total_max = options.max_input_len + options.max_output_len
    prompt_opt = max(1, options.max_input_len // 2)
    phases = {
        # name: (sequence min/opt/max, past min/opt/max)
        "prefill": ((1, prompt_opt, options.max_input_len), (0, 0, 0)),
        "decode": ((1, 1, 1), (1, total_max // 2, total_max - 1)),
    }
    profiles = []
    for phase, (seq, past) in phases.items():
        shapes = {}
        for name, dims in inputs.items():
            if name in ("input_ids", "position_ids"):
                shapes[name] = [[b, s] for b, s in zip((b_min, b_opt, b_max), seq)]
            elif name == "attention_mask":
                shapes[name] = [[b, s + p] for b, s, p in zip((b_min, b_opt, b_max), seq, past)]
            elif name.startswith("past_key_values."):
                heads, head_dim = dims[1], dims[3]
                shapes[name] = [[b, heads, p, head_dim] for b, p in zip((b_min, b_opt, b_max), past)]
            else:
                raise SparsetrtError(f"input '{name}' is not one of the decoder's inputs; export the model with "
                                     "`sparsetrt export` (decoder with KV cache)")
        profiles.append({"name": phase, "shapes": shapes})
    return profiles


def trt_major(version: str) -> int:
    match = re.match(r"(\d+)", version or "")
    if not match:
        raise SparsetrtError(f"cannot read a TensorRT version from '{version}'")
    return int(match.group(1))


def precision_mode(facts: OnnxFacts, requested: str, version: str, flavour: str = "tensorrt"
                   ) -> tuple[bool, list[str], str]:
    """(strongly_typed, TensorRT 10 builder flags, description) for a requested precision on this ONNX.
    TensorRT-RTX (whatever its 1.x version number) behaves as TensorRT 11 here: strongly typed, no flags."""
    major = 11 if flavour == "rtx" else trt_major(version)
    carried = {"float16": "fp16", "bfloat16": "bf16"}.get(facts.float_type, "fp32")
    quant = "int4" if facts.int4 else ("int8" if facts.qdq else None)
    if requested in ("int8", "int4") and quant != requested:
        raise SparsetrtError(f"{requested} engines are built from a Q/DQ ONNX (TensorRT's explicit quantization; "
                             f"implicit calibration is deprecated): run `sparsetrt quantize --precision {requested}` "
                             "and build from its model.<precision>.onnx")
    if quant:
        if requested in ("fp16", "bf16", "fp32"):
            raise SparsetrtError(f"this ONNX is {quant} Q/DQ; it builds as {quant} (strongly typed). Build the float "
                                 "ONNX for a float engine")
        return True, [], f"{quant} Q/DQ over {carried}, strongly typed"
    if requested in ("auto", carried):
        return carried != "fp32" or major >= 11, [], f"{carried} from the ONNX types" + (
            ", strongly typed" if carried != "fp32" or major >= 11 else "")
    if major >= 11:
        name = f"TensorRT-RTX {version}" if flavour == "rtx" else f"TensorRT {version}"
        raise SparsetrtError(f"{name} builds strongly typed networks only (no precision flags): "
                             f"export the {requested} ONNX (`sparsetrt export --precision {requested}`) and build that")
    if carried != "fp32":
        raise SparsetrtError(f"this ONNX is {carried}; build it as {carried} (--precision auto)")
    return False, [requested], f"{requested} builder flag over the fp32 ONNX (TensorRT {major}, weakly typed)"


def compute_capability(target: str) -> tuple[int, int]:
    """"sm86" -> (8, 6), "sm120" -> (12, 0)."""
    digits = target.lower().removeprefix("sm")
    return int(digits[:-1]), int(digits[-1])


def plan_engine(onnx_path: Path, engine_path: Path, options: EngineOptions, tensorrt_version: str,
                facts: OnnxFacts | None = None, flavour: str = "tensorrt", targets: list[str] | None = None
                ) -> EnginePlan:
    """Everything the build will ask TensorRT (or TensorRT-RTX) for, as data: testable here, recorded in the
    manifest. TensorRT-RTX takes its targets as compute capabilities; TensorRT proper builds for its GPU."""
    facts = facts or onnx_facts(onnx_path)
    strongly_typed, flags, description = precision_mode(facts, options.precision, tensorrt_version, flavour)
    profiles = decoder_profiles(facts.inputs, options)
    create_config = {"profiles": profiles, "sparse_weights": options.sparse,
                     "builder_optimization_level": options.optimization_level,
                     "profiling_verbosity": "DETAILED"}  # the inspector reports tactics only at DETAILED
    create_config.update({flag: True for flag in flags})
    if options.workspace_mb:
        create_config["memory_pool_limits"] = {"WORKSPACE": options.workspace_mb << 20}
    targets = list(targets or [])
    if flavour == "rtx":
        create_config["compute_capabilities"] = [list(compute_capability(t)) for t in targets]
    elif options.timing_cache:  # an AOT build on a CPU times nothing: the cache is TensorRT proper's
        create_config["load_timing_cache"] = options.timing_cache
    network = {"strongly_typed": True} if strongly_typed else {}
    plan = EnginePlan(onnx=str(onnx_path), engine=str(engine_path), tensorrt_version=tensorrt_version,
                      strongly_typed=strongly_typed, flavour=flavour, targets=targets, precision=description,
                      builder_flags=flags, profiles=profiles, create_config=create_config, network=network,
                      timing_cache=options.timing_cache if flavour == "tensorrt" else None)
    if flavour == "tensorrt":  # TensorRT-RTX is driven through its API here; trtexec is TensorRT proper's tool
        plan.trtexec = trtexec_args(plan, Path(engine_path).parent / LAYERS_FILE)
    return plan


def trtexec_args(plan: EnginePlan, layers_json: Path) -> list[str]:
    """The trtexec command that builds the same engine (for users who script trtexec, and for bug reports)."""
    args = ["trtexec", f"--onnx={plan.onnx}", f"--saveEngine={plan.engine}"]
    for index, profile in enumerate(plan.profiles):
        args.append(f"--profile={index}")
        for which, position in (("min", 0), ("opt", 1), ("max", 2)):
            spec = ",".join(f"{name}:{'x'.join(str(d) for d in shapes[position])}"
                            for name, shapes in profile["shapes"].items())
            args.append(f"--{which}Shapes={spec}")
    if plan.strongly_typed and trt_major(plan.tensorrt_version) < 11:
        args.append("--stronglyTyped")  # the default (and a no-op) from TensorRT 11
    args += [f"--{flag}" for flag in plan.builder_flags]
    config = plan.create_config
    args.append(f"--sparsity={'enable' if config['sparse_weights'] else 'disable'}")
    args.append(f"--builderOptimizationLevel={config['builder_optimization_level']}")
    if "memory_pool_limits" in config:
        args.append(f"--memPoolSize=workspace:{config['memory_pool_limits']['WORKSPACE'] >> 20}MiB")
    if plan.timing_cache:
        args.append(f"--timingCacheFile={plan.timing_cache}")
    args += ["--profilingVerbosity=detailed", "--dumpLayerInfo", f"--exportLayerInfo={layers_json}",
             "--skipInference", "--verbose"]  # --verbose prints the "(Sparsity)" lines the manifest parses
    return args


def sparsity_from_log(log_text: str) -> dict:
    """Layers TensorRT found eligible for sparse math and those it picked a sparse tactic for, from the build
    log's "(Sparsity)" lines (TensorRT logs both at INFO; the layer lists are comma-separated)."""
    eligible, picked = [], []
    for line in log_text.splitlines():
        if "Layers eligible for sparse math:" in line:
            eligible += _layer_list(line.split("Layers eligible for sparse math:", 1)[1])
        elif "picked sparse implementation for" in line:
            picked += _layer_list(re.split(r"picked sparse implementation for(?: layers)?:?", line, maxsplit=1)[1])
    eligible, picked = list(dict.fromkeys(eligible)), list(dict.fromkeys(picked))
    return {"eligible": eligible, "picked": picked, "eligible_not_picked": [name for name in eligible if name not in picked]}


def _layer_list(text: str) -> list[str]:
    return [part.strip() for part in text.strip().rstrip(".").split(",") if part.strip()]


def sparse_layers_from_inspector(engine_info: dict) -> list[str]:
    """Layers whose chosen tactic is a sparse kernel, from the engine inspector's JSON (DETAILED verbosity):
    sparse GEMM/conv tactic names carry 'sparse'."""
    layers = engine_info.get("Layers", [])
    return [layer.get("Name", "?") for layer in layers if isinstance(layer, dict)
            and "sparse" in str(layer.get("TacticName", "")).lower()]


def check_gpu_for_sparse(capability: tuple[int, int] | None, options: EngineOptions) -> str | None:
    """None when a sparse build makes sense; a warning when it builds but will not accelerate (dense fallback
    allowed); raises when the user did not allow that."""
    if not options.sparse:
        return None
    if capability is None:
        raise SparsetrtError("no CUDA GPU visible: TensorRT builds engines for the GPU it runs on")
    if tuple(capability) < SPARSE_MIN_SM:
        message = (f"this GPU is SM {capability[0]}{capability[1]}; 2:4 sparse tensor cores need SM 80 (Ampere) or "
                   "newer, so SPARSE_WEIGHTS will not accelerate anything")
        if not options.allow_dense_fallback:
            raise SparsetrtError(message + ". Pass --allow-dense-fallback to build anyway, or --dense")
        return message
    return None


# ----------------------------------------------------------------------------------------------- the seam itself


def import_tensorrt():
    """Import TensorRT or say why not (the PyPI stubs raise while fetching their libraries)."""
    available, reason = tensorrt_status()
    if not available:
        raise SparsetrtError(reason)
    return tensorrt


def gpu_facts() -> dict:
    if not cuda_available():
        return {"name": None, "capability": None}
    index = torch.cuda.current_device()
    return {"name": torch.cuda.get_device_name(index), "capability": list(torch.cuda.get_device_capability(index)),
            "cuda": torch.version.cuda}


RTX_SPARSITY_VERDICT = ("not determinable at AOT build time: TensorRT-RTX chooses every kernel, a sparse tactic "
                        "included, just in time on the target GPU; the ONNX's 2:4 verification is the gate")


def build_engine(onnx_path: str | Path, out: str | Path, options: EngineOptions | None = None,
                 overwrite: bool = False, reuse: bool = False, progress: bool = True) -> dict:
    """Build `out`/model.engine from `onnx_path` with the flavour `options.builder` picks; beside it engine.json,
    layers.json, build.log (and trtexec.sh for TensorRT proper). Our lint runs first: a graph it fails is refused
    with its lines. A graph the builder rejects raises EngineBuildError with the builder's own lines (exit 1).
    `reuse`: an identical finished build in `out` is returned as it is."""
    options = options or EngineOptions()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise SparsetrtError(f"{onnx_path} does not exist; pass an .onnx file written by `sparsetrt export` or "
                             "`sparsetrt quantize`")
    report = lint.lint_onnx(onnx_path)
    if not report.ok:
        raise SparsetrtError(f"{onnx_path} fails the TensorRT lint, so no engine was built:\n{report.text()}")
    flavour = choose_builder(options.builder)
    targets = parse_targets(flavour, options.targets)
    facts = onnx_facts(onnx_path)
    version = installed_tensorrt_version(flavour) or "?"
    plan = plan_engine(onnx_path, Path(out) / ENGINE_FILE, options, version, facts, flavour, targets)
    settings = {"onnx_sha256": facts.sha256, "options": options.model_dump(), "flavour": flavour, "version": version,
                "targets": targets}
    out = Path(out)
    run_fingerprint, done = prepare_output(out, ENGINE_MANIFEST, "engine", settings, overwrite, reuse)
    if done:
        return done
    with staged_dir(out) as tmp:
        if flavour == "rtx":
            built = _build_rtx(plan, onnx_path, tmp, progress)
        else:
            built = _build_tensorrt(plan, options, onnx_path, tmp)
        manifest = describe_engine(plan, options, facts, built)
        manifest.update(stage="engine", fingerprint=run_fingerprint, settings=settings)

        write_json(tmp / ENGINE_MANIFEST, manifest)
    return manifest


def _build_tensorrt(plan: EnginePlan, options: EngineOptions, onnx_path: Path, tmp: Path) -> dict:
    """TensorRT proper, in this process, for the GPU it runs on: the engine, its inspector report, the log."""
    trt = import_tensorrt()
    gpu = gpu_facts()
    warning = check_gpu_for_sparse(gpu["capability"], options)
    G_LOGGER = polygraphy_logger.G_LOGGER
    config = dict(plan.create_config)
    config["profiles"] = [_to_profile(polygraphy_trt.Profile, p) for p in plan.profiles]
    config["profiling_verbosity"] = getattr(trt.ProfilingVerbosity, config["profiling_verbosity"])
    if "memory_pool_limits" in config:
        config["memory_pool_limits"] = {getattr(trt.MemoryPoolType, k): v
                                        for k, v in config["memory_pool_limits"].items()}
    save_cache = {"save_timing_cache": options.timing_cache} if options.timing_cache else {}
    # TensorRT logs the "(Sparsity)" verdict at INFO, which Polygraphy forwards at VERBOSE: capture it.
    previous = (G_LOGGER.module_severity, G_LOGGER.log_file)
    G_LOGGER.module_severity = G_LOGGER.VERBOSE
    G_LOGGER.log_file = str(tmp / BUILD_LOG)
    start = time.perf_counter()
    try:
        network = polygraphy_trt.NetworkFromOnnxPath(str(onnx_path), **plan.network)
        engine = polygraphy_trt.EngineFromNetwork(network, config=polygraphy_trt.CreateConfig(**config), **save_cache)()
        polygraphy_trt.SaveEngine(engine, str(tmp / ENGINE_FILE))()
    except Exception as exc:
        raise EngineBuildError(_rejection(plan, _error_lines(tmp / BUILD_LOG) or [str(exc)])) from None
    finally:
        G_LOGGER.module_severity, G_LOGGER.log_file = previous
    seconds = time.perf_counter() - start
    inspector = engine.create_engine_inspector()
    layers = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    write_json(tmp / LAYERS_FILE, layers)
    log_sparsity = sparsity_from_log((tmp / BUILD_LOG).read_text(errors="replace"))
    (tmp / "trtexec.sh").write_text(f"#!/bin/sh\n# the same build with trtexec\nset -e\n{plan.trtexec_command()}\n")
    inspector_sparse = sparse_layers_from_inspector(layers)

    return {"version": trt.__version__, "gpu": gpu, "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
            "bytes": (tmp / ENGINE_FILE).stat().st_size, "layers_summary": None,
            "sparsity": {**log_sparsity, "inspector_sparse_tactics": inspector_sparse,
                         "in_effect": bool(log_sparsity["picked"] or inspector_sparse), "warning": warning,
                         "verdict": None}}


def _build_rtx(plan: EnginePlan, onnx_path: Path, tmp: Path, progress: bool) -> dict:
    """TensorRT-RTX ahead of time, in a process of its own (sparsetrt.build.rtx), no GPU needed: the engine, the
    layer precisions from its build log, the child's own peak RSS."""
    what = f"TensorRT-RTX {plan.tensorrt_version} engine for {'+'.join(plan.targets)} ({plan.precision})"
    if progress:
        print(f"building {what} ...", flush=True)
    result = _run_rtx(onnx_path, plan.create_config, tmp, progress)
    if not result["ok"]:
        raise EngineBuildError(_rejection(plan, result["errors"]))
    layers = parse_layer_dump((tmp / BUILD_LOG).read_text(errors="replace"))
    summary = precision_summary(layers)
    write_json(tmp / LAYERS_FILE, {"source": "TensorRT-RTX build log (VERBOSE layer dump)", "summary": summary,
                                   "layers": layers})
    return {"version": result["version"], "gpu": None, "seconds": result["seconds"],
            "peak_rss_mb": result["peak_rss_mb"], "bytes": result["bytes"], "layers_summary": summary,
            "sparsity": {"eligible": [], "picked": [], "eligible_not_picked": [], "inspector_sparse_tactics": [],
                         "in_effect": None, "warning": None, "verdict": RTX_SPARSITY_VERDICT}}


def rtx_accepts(onnx_path: Path, targets=("sm80",)) -> tuple[bool, list[str]]:
    """Whether TensorRT-RTX parses and builds `onnx_path` (any graph: Polygraphy's default profile for its dynamic
    inputs), and its error lines when not. Nothing is kept: the check behind `sparsetrt lint --build`."""
    config = {"sparse_weights": True, "profiling_verbosity": "DETAILED",
              "compute_capabilities": [list(compute_capability(t)) for t in targets]}
    with tempfile.TemporaryDirectory(prefix="sparsetrt-rtx-check-") as scratch:
        result = _run_rtx(Path(onnx_path), config, Path(scratch), progress=False)
    return result["ok"], result["errors"]


def _run_rtx(onnx_path: Path, create_config: dict, tmp: Path, progress: bool) -> dict:
    """One TensorRT-RTX build in its own process (sparsetrt.build.rtx) into `tmp` (model.engine, build.log): the
    worker's result, with "errors", the builder's own [E] lines (or the worker's error), when it failed."""
    spec_path, result_path = tmp / ".spec.json", tmp / ".result.json"
    spec_path.write_text(json.dumps({"onnx": str(onnx_path), "engine": str(tmp / ENGINE_FILE),
                                     "log": str(tmp / BUILD_LOG), "result": str(result_path),
                                     "create_config": create_config}))
    status, _ = _run_child([sys.executable, "-m", "sparsetrt.build.rtx", str(spec_path)], progress)
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    spec_path.unlink(missing_ok=True)
    result_path.unlink(missing_ok=True)
    result["ok"] = status == 0 and bool(result.get("ok"))
    if not result["ok"]:
        result["errors"] = _error_lines(tmp / BUILD_LOG) or [str(result.get("error") or f"exit status {status}")]
    else:
        result["errors"] = []
    return result


def _run_child(command: list[str], progress: bool, every_s: float = 15.0) -> tuple[int, float]:
    """Run `command` (output discarded: its log is a file), saying every `every_s` that it still runs; (exit
    status, wall seconds). A signal to us takes the child down too."""
    start = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    said = start
    try:
        while child.poll() is None:
            if progress and time.monotonic() - said >= every_s:
                said = time.monotonic()
                print(f"  ... still building, {said - start:.0f} s", flush=True)
            time.sleep(0.2)
        return child.returncode, time.monotonic() - start
    finally:
        if child.returncode is None:
            child.kill()
            child.wait()


def _error_lines(log: Path) -> list[str]:
    """The error lines ("[E] ...", node and op included) of a Polygraphy build log, each once."""
    if not log.is_file():
        return []
    return list(dict.fromkeys(line.strip() for line in log.read_text(errors="replace").splitlines()
                              if line.startswith("[E]")))


def _rejection(plan: EnginePlan, errors: list[str]) -> str:
    """The builder's own error lines (node, op), for a graph it rejected."""
    name = "TensorRT-RTX" if plan.flavour == "rtx" else "TensorRT"
    return f"{name} {plan.tensorrt_version} rejected {plan.onnx}:\n" + "\n".join(errors[:8])


def _to_profile(profile_cls, profile: dict):
    built = profile_cls()
    for name, (lo, opt, hi) in profile["shapes"].items():
        built.add(name, min=lo, opt=opt, max=hi)
    return built


def describe_engine(plan: EnginePlan, options: EngineOptions, facts: OnnxFacts, built: dict) -> dict:
    return {
        "format": "sparsetrt.engine/2",
        "engine": Path(plan.engine).name,
        "flavour": "tensorrt-rtx" if plan.flavour == "rtx" else "tensorrt",
        "tensorrt": built["version"],
        "targets": plan.targets,
        "gpu": built["gpu"],
        "host": platform.node(),
        "source_onnx": {"path": plan.onnx, "sha256": facts.sha256, "float_type": facts.float_type, "qdq": facts.qdq,
                        "int4": facts.int4},
        "options": options.model_dump(),
        "precision": plan.precision,
        "strongly_typed": plan.strongly_typed,
        "flags": (["SPARSE_WEIGHTS"] if options.sparse else []) + [f.upper() for f in plan.builder_flags],
        "profiles": plan.profiles,
        "graph": decoder_geometry(facts.inputs),
        "layers": built["layers_summary"],
        "sparsity": built["sparsity"],
        "trtexec": plan.trtexec_command() if plan.trtexec else None,
        "build_s": round(built["seconds"], 1),
        "peak_rss_mb": None if built["peak_rss_mb"] is None else round(built["peak_rss_mb"], 1),
        "bytes": built["bytes"],
    }


def trtexec_preview(onnx_path: Path, out: Path, options: EngineOptions) -> str:
    """The trtexec command `build_engine` would match, for the TensorRT installed here (10 assumed when none is),
    as `sparsetrt build --print-trtexec` shows it."""
    installed = installed_tensorrt_version()
    version = installed or "10"
    plan = plan_engine(Path(onnx_path), Path(out) / ENGINE_FILE, options, version)
    return (f"# TensorRT {version}{'' if installed else ' assumed (not installed here)'}: {plan.precision}\n"
            f"{plan.trtexec_command()}")


def summary_lines(manifest: dict, out: Path) -> list[str]:
    """What `sparsetrt build` prints after a build."""
    sparsity = manifest["sparsity"]
    targets = f" for {'+'.join(manifest['targets'])}" if manifest.get("targets") else ""
    lines = [f"engine: {Path(out) / manifest['engine']} ({manifest.get('flavour', 'tensorrt')} {manifest['tensorrt']}"
             f"{targets}, {manifest['precision']}, {manifest['build_s']} s, {manifest.get('bytes', 0) / 2**20:.0f} MiB, "
             f"peak RSS {manifest.get('peak_rss_mb') or 0:.0f} MB)"]
    if manifest.get("layers"):
        lines.append(f"weight matmuls: {matmul_text(manifest['layers']) or 'none found in the layer dump'}")
    if sparsity.get("verdict"):
        lines.append(f"2:4 sparsity: {sparsity['verdict']}")
    else:
        lines.append(f"sparse layers: {len(sparsity['picked'])} picked of {len(sparsity['eligible'])} eligible"
                     + (f"; WARNING: {sparsity['warning']}" if sparsity["warning"] else ""))
    return lines
