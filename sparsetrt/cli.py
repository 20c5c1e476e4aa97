"""`sparsetrt <stage>`: thin wrappers over the stage functions. Errors print as one line, exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from sparsetrt.errors import SparsetrtError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsetrt", description="2:4-sparse LLM deployment pipeline")
    parser.add_argument("--verbose", "-v", action="store_true", help="show library logs and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prune", help="prune a checkpoint (N:M or unstructured) and write sparsity.json")
    p.add_argument("--model", required=True, help="checkpoint directory, 'smollm2-135m', or a hub id (online only)")
    p.add_argument("--method", default="sparsegpt", help="magnitude | wanda | sparsegpt (default)")
    p.add_argument("--pattern", default="2:4", help="N:M (N non-zeros of every M) or unstructured:RATIO")
    p.add_argument("--calib", default="auto", help="text file, directory of .txt, JSONL (text field), or 'auto'")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--targets", nargs="+", default=["*"], help="glob(s) over module names (default: every Linear in the blocks)")
    p.add_argument("--exclude", nargs="*", default=[], help="glob(s) of modules to leave dense")
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward pass")
    p.add_argument("--block-size", type=int, default=128, help="SparseGPT lazy-update block")
    p.add_argument("--damping", type=float, default=0.01, help="SparseGPT dampening, fraction of mean diag(H)")
    p.add_argument("--mask-selection", default="joint", help="SparseGPT N:M mask rule: joint | independent")
    p.add_argument("--schedule", default="uniform",
                   help="uniform | scheduled (log-level clusters of OBS error estimates) | owl | hardware (dense or N:M "
                        "per Linear)")
    p.add_argument("--levels", type=int, default=4, help="scheduled: number of error levels")
    p.add_argument("--range", default="auto", help="scheduled: LO,HI sparsity range, or auto (from the error spread)")
    p.add_argument("--error", default="loss", help="scheduled/hardware: rank modules by the OBS error weighted by the "
                                                   "loss's sensitivity (loss, default), absolute, or relative")
    p.add_argument("--probe-sparsity", type=float, default=0.0,
                   help="scheduled: sparsity the errors are estimated at (default 0: the target)")
    p.add_argument("--coverage", type=float, default=0.9,
                   help="hardware: fraction of decoder Linear weights that must be N:M")
    p.add_argument("--owl-lambda", type=float, default=0.08, help="owl: sparsities spread over target +- lambda")
    _common(p)

    p = sub.add_parser("export", help="export a (pruned) checkpoint to ONNX and verify the pattern survived")
    p.add_argument("--model", required=True, help="checkpoint directory (usually the output of `sparsetrt prune`)")
    p.add_argument("--precision", action="append", choices=["fp32", "fp16"], help="repeatable (default: fp32 and fp16)")
    p.add_argument("--opset", type=int, default=21)
    _common(p)

    p = sub.add_parser("quantize", help="INT8 (W8A8) / INT4 (W4A16) Q/DQ ONNX + TensorRT-LLM checkpoints, zeros kept")
    p.add_argument("--model", required=True, help="the (pruned) checkpoint the ONNX files were exported from")
    p.add_argument("--onnx-dir", required=True, help="directory written by `sparsetrt export`")
    p.add_argument("--precision", required=True, choices=["int8", "int4"])
    p.add_argument("--calibrator", default="max", help="INT8 activation ranges: max | percentile | entropy")
    p.add_argument("--percentile", type=float, default=99.99)
    p.add_argument("--smoothquant-alpha", type=float, default=-1.0,
                   help="INT8: SmoothQuant strength (0 = off; default: 0.85 unless --gptq on)")
    p.add_argument("--block-size", type=int, default=128, help="INT4: inputs per scale block (64 or 128)")
    p.add_argument("--no-block-fallback", action="store_true",
                   help="INT4: fail instead of using 64 when 128 does not divide the model's input sizes")
    p.add_argument("--awq", action="store_true", help="INT4: AWQ-lite scale search (with --gptq off)")
    p.add_argument("--gptq", default="auto", choices=["auto", "on", "off"],
                   help="GPTQ weight rounding with the sparsity mask held (auto: on for INT4, off for INT8)")
    p.add_argument("--activations", default="auto", choices=["auto", "fp16", "fp32"],
                   help="graph that gets the Q/DQ nodes (auto: fp32 for INT8, fp16 for INT4)")
    p.add_argument("--embeddings", default="auto", choices=["auto", "float", "int8", "int4"],
                   help="embedding + lm_head, weight-only (auto: int8, free in perplexity; int4 is smaller but costs "
                        "perplexity on small models)")
    p.add_argument("--tp", type=int, nargs="*", default=[1], help="TensorRT-LLM tensor-parallel sizes (none: skip)")
    p.add_argument("--calib", default="auto", help="calibration text, or 'auto' (WikiText-2 valid / Python docs)")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", default="auto", help="parity text, or 'auto' (WikiText-2 test / Python docs)")
    p.add_argument("--windows", type=int, default=4, help="parity windows")
    p.add_argument("--no-progress", action="store_true")
    _common(p)

    p = sub.add_parser("lint", help="check an ONNX file against what the TensorRT ONNX parser accepts")
    p.add_argument("onnx", help="the .onnx file (its external data beside it)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("parity", help="compare PyTorch with the exported ONNX files (ONNX Runtime)")
    p.add_argument("--model", required=True, help="the checkpoint the ONNX files were exported from")
    p.add_argument("--onnx-dir", required=True, help="directory written by `sparsetrt export`")
    p.add_argument("--corpus", default="auto", help="evaluation text, or 'auto' (WikiText-2 test / Python docs)")
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--tol", action="append", default=[], metavar="PRECISION.METRIC=VALUE",
                   help="override a tolerance, e.g. fp16.max_abs_error=0.5 (repeatable)")
    p.add_argument("--generate-tokens", type=int, default=32,
                   help="greedy tokens compared token for token on 10 prompts (0 = skip)")
    p.add_argument("--engine", action="append", default=[],
                   help="also compare this TensorRT engine (repeatable); 'auto': every engines/*/model.engine beside "
                        "the ONNX directory when TensorRT is available, else ONNX Runtime only")
    p.add_argument("--junit", help="also write the JUnit report here (where your CI collects test results)")
    _common(p)

    p = sub.add_parser("engine", help="build a TensorRT engine with 2:4 sparse weights from an exported ONNX")
    p.add_argument("onnx", help="model.onnx / model.fp16.onnx (sparsetrt export) or model.int8|int4.onnx (quantize)")
    p.add_argument("--out", required=True, help="directory for model.engine, engine.json, layers.json, build.log")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16", "int8", "int4"],
                   help="auto: what the ONNX carries (TensorRT 11 allows nothing else)")
    p.add_argument("--dense", action="store_true", help="build without SPARSE_WEIGHTS (the comparison engine)")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--opt-batch", type=int, default=1)
    p.add_argument("--max-input-len", type=int, default=512)
    p.add_argument("--max-output-len", type=int, default=128)
    p.add_argument("--optimization-level", type=int, default=3, help="builder optimization level 0-5")
    p.add_argument("--workspace-mb", type=int, help="workspace memory pool limit (default: TensorRT's)")
    p.add_argument("--timing-cache", help="timing cache file: read if present, written after the build")
    p.add_argument("--allow-dense-fallback", action="store_true",
                   help="build a sparse engine on a GPU older than Ampere (it will not accelerate)")
    p.add_argument("--print-trtexec", action="store_true", help="print the equivalent trtexec command and exit")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("generate", help="generate text with any backend (greedy or sampling), with timings")
    p.add_argument("--backend", default="pytorch", choices=["pytorch", "onnxruntime", "tensorrt"])
    p.add_argument("--model", required=True, help="checkpoint dir (pytorch), .onnx (onnxruntime), .engine (tensorrt)")
    p.add_argument("--tokenizer", help="checkpoint dir with the tokenizer (default: --model, or the pruned checkpoint "
                                       "found next to an ONNX/engine in an artifacts directory)")
    p.add_argument("--prompt", action="append", default=[], help="repeatable: the prompts form one batch")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="pytorch/onnxruntime: cpu | cuda | auto")
    p.add_argument("--json", action="store_true", help="print tokens, text and timings as JSON")

    p = sub.add_parser("serve", help="OpenAI-compatible completions server (/v1/completions, /health, /metrics)")
    p.add_argument("--model", default="smollm2-135m",
                   help="smollm2-135m, a checkpoint directory, an artifacts directory (make demo), .onnx or .engine")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt", "pytorch"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "int8", "int4"],
                   help="which file of an artifacts directory to serve (auto: fp32 ONNX, fp16 engine)")
    p.add_argument("--served-model-name", help="the name clients send as `model` (default: from --model)")
    p.add_argument("--tokenizer", help="checkpoint dir with the tokenizer, for an .onnx/.engine outside an artifacts "
                                       "directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; 0.0.0.0 in containers)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for the model; one more gets 429")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request, queue wait included")
    p.add_argument("--max-tokens-limit", type=int, default=256, help="largest max_tokens a request may ask for")
    p.add_argument("--max-prompt-tokens", type=int,
                   help="longest prompt (default: the engine's profile for TensorRT, else 2048)")
    p.add_argument("--max-body-bytes", type=int, default=256 * 1024)
    p.add_argument("--graceful-timeout", type=float, help="seconds in-flight requests get after SIGTERM "
                                                          "(default: the request timeout)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    p.add_argument("--adaptive", metavar="POLICY", choices=["linucb", "thompson", "threshold", "static"],
                   help="route each request to a variant of --variants chosen by this controller (linucb, thompson, "
                        "threshold, static); --model then names only what clients send")
    p.add_argument("--variants", default="artifacts/variants", help="with --adaptive: the variant set (variants.json "
                                                                     "or its folder, from `sparsetrt variants`)")
    p.add_argument("--controller-state", help="with --adaptive: JSON state file, loaded at start and saved after "
                                              "every audited request (default: VARIANTS/controller-POLICY.json)")
    p.add_argument("--lam", type=float, default=0.25, help="with --adaptive: nats of NLL per unit of cost relative "
                                                           "to dense, the price of compute (make bench-adaptive "
                                                           "reports the static frontier's slope as a guide)")
    p.add_argument("--budget", type=float, help="with --adaptive: mean cost relative to dense to spend; lam then "
                                                "follows dual ascent towards it")
    p.add_argument("--audit-fraction", type=float, default=0.1,
                   help="with --adaptive: share of requests also run on the dense variant to learn quality")
    p.add_argument("--escalation", action="store_true", help="with --adaptive: hand a request to dense when a "
                                                             "token's entropy crosses the learned threshold")
    p.add_argument("--static-variant", help="with --adaptive static: the variant to serve")
    p.add_argument("--seed", type=int, default=0, help="with --adaptive: the controller's seed")

    p = sub.add_parser("variants", help="build a family of variants of one model (dense, 2:4, 2:4+INT8, 2:4+INT4, ...) "
                                        "and time each on this backend (variants.json)")
    p.add_argument("--artifacts", default="artifacts", help="artifacts directory the configs write to")
    p.add_argument("--configs", nargs="*", default=["configs/demo-int8.toml", "configs/demo-int4.toml"],
                   help="pipeline configs whose 2:4 runs form the set (finished stages are reused)")
    p.add_argument("--no-dense", action="store_true", help="skip exporting/quantizing the dense baseline (it must "
                                                            "exist already)")
    p.add_argument("--schedules", help="also export the hardware-mode schedules found here (make bench-schedule's "
                                       "artifacts/schedule)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--out", default="artifacts/variants")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("bench-adaptive", help="per-input variant choice (bandits, threshold, oracle) vs static "
                                              "variants on a mixed stream (adaptive.json/md/png)")
    p.add_argument("--variants", default="artifacts/variants", help="the variant set (from `sparsetrt variants`)")
    p.add_argument("--only", help="comma-separated variant names to use (dense and the probe are always kept)")
    p.add_argument("--inputs-per-source", type=int, default=40)
    p.add_argument("--new-tokens", type=int, default=16, help="true continuation tokens scored per input")
    p.add_argument("--min-prompt-tokens", type=int, default=24)
    p.add_argument("--max-prompt-tokens", type=int, default=160)
    p.add_argument("--lam", type=float, help="price of cost (nats per unit relative to dense); default: the "
                                             "static frontier's slope between the probe variant and dense")
    p.add_argument("--audit-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--remeasure", action="store_true", help="time every variant again instead of reusing the table")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--work", default="artifacts/adaptive", help="the measured table (reused when settings match)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("loadtest", help="N concurrent clients against a running server; latency, throughput, errors")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--stream-fraction", type=float, default=0.5)
    p.add_argument("--out", help="write the records and summary to this JSON file")

    p = sub.add_parser("bench-serve", help="start `sparsetrt serve`, load it (normal + overloaded queue), write "
                                           "serve.md/json/png")
    p.add_argument("--model", default="artifacts", help="what `serve --model` gets (default: the demo's artifacts)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt", "pytorch"])
    p.add_argument("--precision", default="auto")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the load phase")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--overload-queue", type=int, default=4, help="queue limit of the overload phase")
    p.add_argument("--overload-duration", type=float, default=20.0)
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--work", default="artifacts/serve-bench", help="server logs")

    p = sub.add_parser("bench", help="decode speed, TTFT, latency percentiles, memory, energy of every variant")
    p.add_argument("--artifacts", default="artifacts", help="directory written by `sparsetrt run` (make demo)")
    p.add_argument("--dense", action="store_true",
                   help="also export + quantize the dense model into ARTIFACTS/dense (the baseline for 2:4)")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", help="comma-separated substrings: keep variants whose label contains one")
    p.add_argument("--corpus", default="auto", help="prompt text, or 'auto' (WikiText-2 test / Python docs)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("verify", help="check the sparsity pattern a sparsity.json claims")
    p.add_argument("path", help="pruned checkpoint directory, or an .onnx file (then pass --checkpoint)")
    p.add_argument("--checkpoint", help="with an .onnx file: the pruned checkpoint it came from")

    p = sub.add_parser("run", help="the whole pipeline from a config file (TOML or YAML)")
    p.add_argument("--config", required=True)
    p.add_argument("--out", help="override the config's output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a different run's artifacts")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("distill", help="recover a pruned model by distilling the dense one into it, masks held fixed")
    p.add_argument("--teacher", required=True, help="the dense checkpoint the student was pruned from ('smollm2-135m' ok)")
    p.add_argument("--student", required=True, help="pruned checkpoint directory (with sparsity.json)")
    p.add_argument("--data", default="auto", help="training text: file, .txt directory, JSONL, or auto (calibration "
                                                  "split; the evaluation split is refused)")
    p.add_argument("--max-minutes", type=float, default=30.0, help="wall-clock budget of this invocation")
    p.add_argument("--steps", type=int, default=0, help="optimizer steps (default 0: as many as fit the budget)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4, help="windows per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--hidden-weight", type=float, default=0.0, help="weight of the hidden-state MSE term (0 = off)")
    p.add_argument("--train-embeddings", action="store_true", help="also train the embedding / tied lm_head")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=20, help="steps between resume points")
    p.add_argument("--no-progress", action="store_true")
    _common(p)

    p = sub.add_parser("bench-schedule", help="perplexity of sparsity schedules (uniform / scheduled / OWL / "
                                              "hardware), before and after distillation, on two text domains")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--work", default="artifacts/schedule", help="where the pruned and distilled models go (reused)")
    p.add_argument("--targets", default="0.6,0.7,0.8", help="unstructured target sparsities")
    p.add_argument("--coverages", default="0.9,0.75", help="hardware mode: fractions of Linear weights made 2:4")
    p.add_argument("--distill", default="all", help="comma-separated variant names to distill, all, or none")
    p.add_argument("--distill-minutes", type=float, default=30.0, help="budget per distilled variant")
    p.add_argument("--eval-windows", type=int, default=40)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="benchmarks")

    p = sub.add_parser("quality", help="WikiText-2 perplexity of dense vs pruned models (benchmark)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--methods", default="dense,magnitude,wanda,sparsegpt,sparsegpt+int8,sparsegpt+int4",
                   help="comma-separated; METHOD+int8 / +int4 quantizes after pruning")
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an output directory that holds a different run")
    if p.prog.endswith(("prune", "export")):
        p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the checkpoint")
    if p.prog.endswith("prune"):
        p.add_argument("--no-progress", action="store_true")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except SparsetrtError as exc:
        print(f"sparsetrt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsetrt: interrupted; no partial output was kept", file=sys.stderr)
        return 130


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import warnings

        warnings.filterwarnings("ignore")
        # transformers draws a bar for every checkpoint load; ours (per layer) are the ones that matter.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def cmd_prune(args) -> int:
    from sparsetrt.prune.stage import prune_checkpoint

    manifest = prune_checkpoint(
        args.model, args.out, method=args.method, pattern=args.pattern, calib=args.calib,
        calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len, seed=args.seed, targets=args.targets,
        exclude=args.exclude, batch_size=args.batch_size, overwrite=args.overwrite,
        sparsegpt={"block_size": args.block_size, "damping": args.damping, "mask_selection": args.mask_selection},
        schedule=schedule_options(args), trust_remote_code=args.trust_remote_code, progress=not args.no_progress,
    )
    s, plan = manifest["summary"], manifest["schedule"]
    print(f"pruned {s['modules']} modules ({manifest['method']} {manifest['pattern']}, {plan['mode']}), zero fraction "
          f"{s['zero_fraction']:.4f} of the pruned modules, {plan['measured_sparsity']:.4f} over every target, "
          f"{manifest['timings']['prune_s']:.1f} s -> {args.out}")
    return 0


def schedule_options(args) -> dict:
    """--schedule and its knobs as prune.schedule.ScheduleSettings fields."""
    return {"mode": args.schedule, "levels": args.levels, "range": args.range, "error": args.error,
            "probe_sparsity": args.probe_sparsity, "coverage": args.coverage, "owl_lambda": args.owl_lambda}


def cmd_export(args) -> int:
    from sparsetrt.export.stage import export_checkpoint

    manifest = export_checkpoint(args.model, args.out, precisions=args.precision or ["fp32", "fp16"],
                                 opset=args.opset, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    for precision, info in manifest["files"].items():
        v = info["sparsity_verification"]
        note = f", pattern verified on {v['checked']} weights" if v else ""
        print(f"{precision}: {Path(args.out) / info['onnx']}{note}")
    return 0


def cmd_parity(args) -> int:
    from sparsetrt.runtime.parity import run_parity

    report = run_parity(args.model, args.onnx_dir, args.out, corpus=args.corpus, windows=args.windows,
                        seq_len=args.seq_len, tolerances=args.tol, generate_tokens=args.generate_tokens,
                        engines=_parity_engines(args.engine, Path(args.onnx_dir)), overwrite=args.overwrite)
    for cand in report["candidates"]:
        failed = [c["metric"] for c in cand["checks"] if not c["passed"]]
        print(f"{cand['name']}: {'PASS' if cand['passed'] else 'FAIL (' + ', '.join(failed) + ')'}")
    print(f"report: {Path(args.out) / 'parity.html'}")
    if args.junit:
        from sparsetrt.runtime.report import junit_xml, write_text_atomic

        junit = Path(args.junit)
        junit.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(junit, junit_xml(report))
        print(f"JUnit: {junit}")
    return 0 if report["passed"] else 1


def _parity_engines(requested: list[str], onnx_dir: Path) -> list[Path]:
    if "auto" not in requested:
        return [Path(e) for e in requested]
    from sparsetrt.build import tensorrt_status

    available, reason = tensorrt_status()
    found = sorted((onnx_dir.parent / "engines").glob("*/model.engine"))
    if not available:
        print(f"TensorRT: {reason}; comparing PyTorch with ONNX Runtime only", file=sys.stderr)
        return []
    if not found:
        print(f"no engines under {onnx_dir.parent / 'engines'} (build one with `make engine`); "
              "comparing PyTorch with ONNX Runtime only", file=sys.stderr)
    return found + [Path(e) for e in requested if e != "auto"]


def cmd_quantize(args) -> int:
    from sparsetrt.export.quant_stage import quantize_checkpoint
    from sparsetrt.pipeline import quantize_lines

    settings = {"precision": args.precision, "calibrator": args.calibrator, "percentile": args.percentile,
                "smoothquant_alpha": args.smoothquant_alpha, "block_size": args.block_size,
                "block_fallback": not args.no_block_fallback, "awq": args.awq, "gptq": args.gptq,
                "activations": args.activations, "embeddings": args.embeddings}
    manifest = quantize_checkpoint(args.model, args.onnx_dir, args.out, settings, calib=args.calib,
                                   calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len, seed=args.seed,
                                   tp_sizes=args.tp, parity_corpus=args.corpus, parity_windows=args.windows,
                                   overwrite=args.overwrite, progress=not args.no_progress)
    print("\n".join(quantize_lines(Path(args.out), manifest)))
    return 0 if manifest["passed"] else 1


def cmd_lint(args) -> int:
    from sparsetrt.export.lint import lint_onnx

    report = lint_onnx(args.onnx)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    return 0 if report.ok else 1


def cmd_verify(args) -> int:
    from sparsetrt.prune.verify import load_manifest, verify_checkpoint, verify_onnx

    path = Path(args.path)
    if path.suffix == ".onnx":
        if not args.checkpoint:
            raise SparsetrtError("verifying an .onnx file needs --checkpoint (the pruned checkpoint it was exported from)")
        if not path.is_file():
            raise SparsetrtError(f"{path} does not exist")
        result = verify_onnx(path, load_manifest(Path(args.checkpoint)), Path(args.checkpoint))
    else:
        result = verify_checkpoint(path)
    result.raise_if_failed()
    print(f"OK: {result.checked} modules have their claimed pattern in {result.where}")
    return 0


def cmd_run(args) -> int:
    from sparsetrt.config import load_config
    from sparsetrt.pipeline import run_pipeline

    config = load_config(args.config)
    if args.out:
        config.out = args.out
    summary = run_pipeline(config, overwrite=args.overwrite, progress=not args.no_progress)
    return 0 if summary["passed"] else 1


def cmd_distill(args) -> int:
    from sparsetrt.prune.distill import DistillSettings
    from sparsetrt.prune.distill_stage import distill_checkpoint

    settings = DistillSettings(steps=args.steps, max_minutes=args.max_minutes, seq_len=args.seq_len,
                               batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                               temperature=args.temperature, hidden_weight=args.hidden_weight,
                               train_embeddings=args.train_embeddings, seed=args.seed,
                               checkpoint_every=args.checkpoint_every)
    m = distill_checkpoint(args.teacher, args.student, args.out, data=args.data, settings=settings,
                           overwrite=args.overwrite, progress=not args.no_progress)
    early = f" (stopped early: {m['stopped_early']})" if m["stopped_early"] else ""
    print(f"distilled {m['steps']} steps, {m['tokens_seen']:,} tokens, loss {m['loss']['first']:.4f} -> "
          f"{m['loss']['last_10_mean']:.4f} (mean of the last 10), {m['train_seconds']:.0f} s{early}; zeros verified "
          f"on {m['verification']['checked']} modules -> {args.out}")
    return 0


def cmd_bench_schedule(args) -> int:
    from sparsetrt.runtime.schedule_bench import ScheduleBenchSettings, schedule_benchmark

    try:
        targets = [float(v) for v in args.targets.split(",")]
        coverages = [float(v) for v in args.coverages.split(",") if v]
    except ValueError:
        raise SparsetrtError("--targets and --coverages take comma-separated numbers, e.g. 0.6,0.7,0.8") from None
    settings = ScheduleBenchSettings(targets=targets, coverages=coverages, distill=args.distill.split(","),
                                     distill_minutes=args.distill_minutes, eval_windows=args.eval_windows)
    schedule_benchmark(args.model, args.out, args.work, settings, progress=not args.no_progress)
    print(f"report: {Path(args.out) / 'schedule.md'}")
    return 0


def cmd_quality(args) -> int:
    from sparsetrt.runtime.quality import quality_benchmark

    result = quality_benchmark(args.model, args.out, methods=args.methods.split(","), pattern=args.pattern,
                               calib_samples=args.calib_samples, seq_len=args.seq_len, eval_windows=args.eval_windows,
                               seed=args.seed, progress=not args.no_progress)
    print(json.dumps({r["method"]: round(r["perplexity"], 2) for r in result["results"]}))
    return 0


def cmd_engine(args) -> int:
    from sparsetrt.build.engine import EngineOptions, build_engine, plan_engine

    options = EngineOptions(precision=args.precision, sparse=not args.dense, max_batch=args.max_batch,
                            opt_batch=args.opt_batch, max_input_len=args.max_input_len,
                            max_output_len=args.max_output_len, optimization_level=args.optimization_level,
                            workspace_mb=args.workspace_mb, timing_cache=args.timing_cache,
                            allow_dense_fallback=args.allow_dense_fallback).validate()
    if args.print_trtexec:
        from sparsetrt.build import installed_tensorrt_version

        installed = installed_tensorrt_version()
        version = installed or "10"
        plan = plan_engine(Path(args.onnx), Path(args.out) / "model.engine", options, version)
        print(f"# TensorRT {version}{'' if installed else ' assumed (not installed here)'}: "
              f"{plan.precision}\n{plan.trtexec_command()}")
        return 0
    sidecar = build_engine(args.onnx, args.out, options, overwrite=args.overwrite)
    sparsity = sidecar["sparsity"]
    print(f"engine: {Path(args.out) / sidecar['engine']} ({sidecar['precision']}, {sidecar['build_s']} s)")
    print(f"sparse layers: {len(sparsity['picked'])} picked of {len(sparsity['eligible'])} eligible"
          + (f"; WARNING: {sparsity['warning']}" if sparsity["warning"] else ""))
    return 0


def cmd_generate(args) -> int:
    from sparsetrt.models import load_tokenizer
    from sparsetrt.runtime.backends import make_runner
    from sparsetrt.runtime.generate import Sampling, encode_prompts, generate, stop_tokens_of
    from sparsetrt.runtime.serve_model import tokenizer_dir_for

    if not args.prompt:
        raise SparsetrtError("pass at least one --prompt")
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else tokenizer_dir_for(Path(args.model))
    tokenizer = load_tokenizer(tokenizer_dir)
    runner = make_runner(args.backend, args.model, device=args.device)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed, stop_tokens=stop_tokens_of(tokenizer))
    result = generate(runner, encode_prompts(tokenizer, args.prompt, chat=args.chat), sampling,
                      pad_id=tokenizer.pad_token_id or 0)
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in result.tokens]
    timing = {"ttft_ms": round(result.ttft_s * 1000, 2), "decode_tokens_per_s": round(result.decode_tokens_per_s, 2),
              "total_s": round(result.total_s, 3)}
    if args.json:
        print(json.dumps({"backend": args.backend, "outputs": [{"prompt": p, "tokens": t, "text": x} for p, t, x in
                                                               zip(args.prompt, result.tokens, texts)], **timing}))
        return 0
    for prompt, text in zip(args.prompt, texts):
        print(f"{prompt}{text}\n")
    print(f"[{args.backend}] TTFT {timing['ttft_ms']} ms, decode {timing['decode_tokens_per_s']} tok/s", file=sys.stderr)
    return 0


def cmd_loadtest(args) -> int:
    import asyncio

    from sparsetrt.artifacts import write_json
    from sparsetrt.runtime.loadtest import LoadSettings, run_load

    if args.clients < 1 or args.duration <= 0 or args.max_tokens < 1:
        raise SparsetrtError("--clients and --max-tokens must be >= 1 and --duration > 0")
    settings = LoadSettings(url=args.url, clients=args.clients, duration_s=args.duration, max_tokens=args.max_tokens,
                            stream_fraction=args.stream_fraction)
    try:
        result = asyncio.run(run_load(settings))
    except OSError as exc:
        raise SparsetrtError(f"cannot reach {args.url} ({exc}); start a server with `sparsetrt serve`") from None
    if args.out:
        write_json(Path(args.out), result)
    print(json.dumps(result["summary"], indent=2))
    summary = result["summary"]
    return 0 if summary["status_5xx"] == 0 and summary["malformed"] == 0 else 1


def cmd_bench_serve(args) -> int:
    from sparsetrt.runtime.serve_bench import ServeBenchSettings, run_serve_bench

    settings = ServeBenchSettings(model=args.model, backend=args.backend, precision=args.precision,
                                  clients=args.clients, duration_s=args.duration, max_tokens=args.max_tokens,
                                  overload_queue=args.overload_queue, overload_duration_s=args.overload_duration)
    report = run_serve_bench(settings, Path(args.out), Path(args.work))
    for name, phase in report["phases"].items():
        s = phase["summary"]
        print(f"{name}: {s['requests']} requests {s['by_status']}, 5xx {s['status_5xx']}, malformed {s['malformed']}, "
              f"p99 {s['latency_s']['p99']:.2f} s, {s['throughput_rps']:.2f} req/s, metrics match "
              f"{s['metrics_match']}, SIGTERM exit {phase['sigterm_exit_code']}")
    print(f"wrote {Path(args.out) / 'serve.md'}, serve.json, serve.png")
    return 0


def cmd_serve(args) -> int:
    from sparsetrt.runtime.serve_model import resolve_served_model
    from sparsetrt.runtime.server import ServeSettings, serve

    settings = ServeSettings(host=args.host, port=args.port, max_queue=args.max_queue,
                             request_timeout_s=args.request_timeout, max_tokens_limit=args.max_tokens_limit,
                             max_body_bytes=args.max_body_bytes, graceful_timeout_s=args.graceful_timeout,
                             log_level=args.log_level).validate()
    if args.adaptive:
        from sparsetrt.runtime.adaptive_serve import resolve_adaptive
        from sparsetrt.runtime.controllers import ControllerSettings

        controller = ControllerSettings(policy=args.adaptive, lam=args.lam, budget=args.budget,
                                        audit_fraction=args.audit_fraction, escalation=args.escalation,
                                        static_arm=args.static_variant, seed=args.seed)
        served = resolve_adaptive(args.variants, controller, name=args.served_model_name,
                                  state_path=args.controller_state, max_prompt_tokens=args.max_prompt_tokens)
    else:
        served = resolve_served_model(args.model, args.backend, args.precision, name=args.served_model_name,
                                      max_prompt_tokens=args.max_prompt_tokens, tokenizer=args.tokenizer)
    return serve(served, settings)


def cmd_bench(args) -> int:
    from sparsetrt.models import load_tokenizer
    from sparsetrt.runtime.bench import BenchSettings, discover_variants, prepare_dense, run_bench
    from sparsetrt.runtime.bench_report import summary

    artifacts = Path(args.artifacts)
    settings = BenchSettings(batches=tuple(int(b) for b in args.batches.split(",")), prompt_tokens=args.prompt_tokens,
                             new_tokens=args.new_tokens, warmup=args.warmup, repeats=args.repeats).validate()
    if args.dense:
        print("==> dense baseline artifacts (export + quantize with the 2:4 runs' settings)", flush=True)
        prepare_dense(artifacts, progress=not args.no_progress)
    import torch

    variants = discover_variants(artifacts, cuda=torch.cuda.is_available())
    if args.only:
        keep = [k.strip() for k in args.only.split(",")]
        variants = [v for v in variants if any(k in v.label for k in keep)]
    records = run_bench(variants, load_tokenizer(artifacts / "pruned"), args.out, settings, corpus=args.corpus,
                        progress=not args.no_progress)
    head = summary(records)
    if head:
        print(f"batch 1: {head['best_onnxruntime']} {head['best_tokens_per_s']:.1f} tok/s = {head['speedup']:.2f}x "
              f"{head['baseline']} ({head['baseline_tokens_per_s']:.1f} tok/s)")
    print(f"wrote {Path(args.out) / 'bench.json'}, bench.md and plots")
    return 0


def cmd_variants(args) -> int:
    from sparsetrt.runtime.variant_set import VARIANT_MANIFEST, build_variant_set

    manifest = build_variant_set(Path(args.artifacts), Path(args.out), backend=args.backend, configs=args.configs,
                                 dense=not args.no_dense, schedules=Path(args.schedules) if args.schedules else None,
                                 progress=not args.no_progress)
    print(f"{'variant':<22} {'MB':>7} {'prefill ms@128':>15} {'decode ms':>10} {'x dense':>8} {'NLL':>6}")
    for v in manifest["variants"]:
        print(f"{v['name']:<22} {v['file_bytes'] / 1e6:>7.0f} {v['cost']['prefill_ms']['128']:>15.1f} "
              f"{v['cost']['decode_ms']:>10.1f} {v['relative_cost']:>8.3f} {v['quality_nll']:>6.3f}")
    print(f"probe (cheapest; ties within 10 % to the lower NLL): {manifest['probe']}; wrote {Path(args.out) / VARIANT_MANIFEST}")
    return 0


def cmd_bench_adaptive(args) -> int:
    from sparsetrt.runtime.adaptive_bench import AdaptiveBenchSettings, run_adaptive_bench

    settings = AdaptiveBenchSettings(inputs_per_source=args.inputs_per_source, new_tokens=args.new_tokens,
                                     min_prompt_tokens=args.min_prompt_tokens, max_prompt_tokens=args.max_prompt_tokens,
                                     lam=args.lam, audit_fraction=args.audit_fraction, seed=args.seed,
                                     variants=tuple(v.strip() for v in args.only.split(",")) if args.only else ())
    report = run_adaptive_bench(Path(args.variants), Path(args.out), Path(args.work), settings,
                                reuse_table=not args.remeasure, progress=not args.no_progress)
    for row in report["policies"]:
        print(f"{row['policy']:<26} cost {row['relative_cost']:.3f}x dense  NLL {row['nll']:.3f}  agreement "
              f"{row['agreement_with_dense']:.3f}  decision {row['decision_overhead_us']:.0f} us")
    acc = report["acceptance"]
    print(f"acceptance: frontier {acc['frontier']['passed']}, 95 % agreement at <= 60 % cost "
          f"{acc['agreement_at_cost']['passed']}, overhead {acc['overhead']['passed']}")
    print(f"wrote {Path(args.out) / 'adaptive.json'}, adaptive.md, adaptive.png")
    return 0


COMMANDS = {"prune": cmd_prune, "export": cmd_export, "quantize": cmd_quantize, "lint": cmd_lint,
            "parity": cmd_parity, "verify": cmd_verify, "run": cmd_run, "quality": cmd_quality,
            "engine": cmd_engine, "generate": cmd_generate, "bench": cmd_bench,
            "distill": cmd_distill, "bench-schedule": cmd_bench_schedule, "serve": cmd_serve,
            "loadtest": cmd_loadtest, "bench-serve": cmd_bench_serve,
            "variants": cmd_variants, "bench-adaptive": cmd_bench_adaptive}

if __name__ == "__main__":
    sys.exit(main())
