"""The runtime room: `sparsetrt generate`, `sparsetrt parity`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sparsetrt.cli import Command, options
from sparsetrt.errors import SparsetrtError
from sparsetrt.layout import ArtifactsTree, tokenizer_dir_for
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.settings import BACKENDS

architectures = lazy_import("sparsetrt.architectures")
backends = lazy_import("sparsetrt.runtime.backends")
generation = lazy_import("sparsetrt.runtime.generate")
models = lazy_import("sparsetrt.models")
parity_stage = lazy_import("sparsetrt.runtime.parity.compare")


def generate_arguments(p):
    p.add_argument("--backend", default="pytorch", choices=BACKENDS)
    p.add_argument("--model", required=True, help="checkpoint dir (pytorch), .onnx (onnxruntime), .engine (tensorrt)")
    p.add_argument("--tokenizer", help="checkpoint dir with the tokenizer (default: --model, or the pruned checkpoint "
                                       "found next to an ONNX/engine in an artifacts directory)")
    p.add_argument("--prompt", action="append", default=[], help="repeatable: the prompts form one batch")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    options.seed(p)
    p.add_argument("--device", default="auto", help="pytorch/onnxruntime: cpu | cuda | auto")
    p.add_argument("--json", action="store_true", help="print tokens, text and timings as JSON")


def generate(args) -> int:
    if not args.prompt:
        raise SparsetrtError("pass at least one --prompt")
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else tokenizer_dir_for(Path(args.model))
    tokenizer = models.load_tokenizer(tokenizer_dir)
    sampling = generation.Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                   top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                   stop_tokens=generation.stop_tokens_of(tokenizer)).validate()
    runner = backends.make_runner(args.backend, args.model, device=args.device)
    result = generation.generate_text(runner, tokenizer, args.prompt, sampling, chat=args.chat,
                                      max_positions=architectures.max_positions_of(tokenizer_dir))
    if args.json:
        print(json.dumps(result))
        return 0
    for output in result["outputs"]:
        print(f"{output['prompt']}{output['text']}\n")
    print(f"[{args.backend}] TTFT {result['ttft_ms']} ms, decode {result['decode_tokens_per_s']} tok/s",
          file=sys.stderr)
    return 0


def parity_arguments(p):
    p.add_argument("--artifacts", help="an artifacts directory (make demo): its pruned/ checkpoint and onnx/ files, "
                                       "instead of --model and --onnx-dir")
    p.add_argument("--model", help="the checkpoint the ONNX files were exported from")
    p.add_argument("--onnx-dir", help="directory written by `sparsetrt export`")
    options.eval_corpus(p)
    p.add_argument("--tol", action="append", default=[], metavar="PRECISION.METRIC=VALUE",
                   help="override a tolerance, e.g. fp16.max_abs_error=0.5 (repeatable)")
    p.add_argument("--generate-tokens", type=int, default=32,
                   help="greedy tokens compared token for token on 10 prompts (0 = skip)")
    p.add_argument("--engine", action="append", default=[],
                   help="also compare this TensorRT engine (repeatable); 'auto': every engines/*/model.engine beside "
                        "the ONNX directory when TensorRT is available, else ONNX Runtime only")
    p.add_argument("--junit", help="also write the JUnit report here (where your CI collects test results)")
    options.output(p)


def parity(args) -> int:
    if args.artifacts:
        tree = ArtifactsTree(args.artifacts)
        model, onnx_dir = args.model or tree.pruned, Path(args.onnx_dir) if args.onnx_dir else tree.onnx_dir
    elif args.model and args.onnx_dir:
        model, onnx_dir = args.model, Path(args.onnx_dir)
    else:
        raise SparsetrtError("pass --artifacts DIR, or both --model and --onnx-dir")
    engines, note = parity_stage.engines_to_compare(args.engine, onnx_dir)
    if note:
        print(note, file=sys.stderr)
    report = parity_stage.run_parity(model, onnx_dir, args.out, corpus=args.corpus, windows=args.windows,
                                     seq_len=args.seq_len, tolerances=args.tol, generate_tokens=args.generate_tokens,
                                     engines=engines, overwrite=args.overwrite)
    print("\n".join(parity_stage.summary_lines(report, Path(args.out))))
    if args.junit:
        print(f"JUnit: {parity_stage.write_junit(report, Path(args.junit))}")
    return 0 if report["passed"] else 1


COMMANDS = [
    Command("generate", "generate text with any backend (greedy or sampling), with timings", generate_arguments,
            generate),
    Command("parity", "compare PyTorch with the exported ONNX files (ONNX Runtime) and TensorRT engines",
            parity_arguments, parity),
]
