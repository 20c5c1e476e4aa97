"""The prune room: `sparsetrt prune`, `sparsetrt shrink`, `sparsetrt verify`, `sparsetrt distill`."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command, options
from sparsetrt.layout import ArtifactsTree
from sparsetrt.lazy import lazy_import

distill_settings = lazy_import("sparsetrt.prune.distill")
distill_stage = lazy_import("sparsetrt.prune.distill_stage")
prune_stage = lazy_import("sparsetrt.prune.stage")
shrink_math = lazy_import("sparsetrt.prune.shrink")
shrink_stage = lazy_import("sparsetrt.prune.shrink_stage")
verify_stage = lazy_import("sparsetrt.prune.verify")


def prune_arguments(p):
    p.add_argument("--model", required=True, help="checkpoint directory, 'smollm2-135m', or a hub id (online only)")
    p.add_argument("--method", default="sparsegpt", help="magnitude | wanda | sparsegpt (default)")
    p.add_argument("--pattern", default="2:4", help="N:M (N non-zeros of every M) or unstructured:RATIO")
    options.calibration(p)
    p.add_argument("--targets", nargs="+", default=["*"],
                   help="glob(s) over module names (default: every Linear in the blocks)")
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
    options.placement(p)
    options.output(p)
    options.trust_remote_code(p)
    options.progress(p)


def prune(args) -> int:
    schedule = {"mode": args.schedule, "levels": args.levels, "range": args.range, "error": args.error,
                "probe_sparsity": args.probe_sparsity, "coverage": args.coverage, "owl_lambda": args.owl_lambda}
    manifest = prune_stage.prune_checkpoint(
        args.model, args.out, method=args.method, pattern=args.pattern, calib=args.calib,
        calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len, seed=args.seed, targets=args.targets,
        exclude=args.exclude, batch_size=args.batch_size, overwrite=args.overwrite,
        sparsegpt={"block_size": args.block_size, "damping": args.damping, "mask_selection": args.mask_selection},
        schedule=schedule, trust_remote_code=args.trust_remote_code, progress=not args.no_progress,
        stream=args.stream, device=args.device,
    )
    print(prune_stage.summary_line(manifest, args.out))
    return 0


def shrink_arguments(p):
    # no choices= from sparsetrt.prune.importance: building the parser must not import torch; ShrinkSettings
    # refuses an unknown name with the list
    p.add_argument("--model", required=True, help="checkpoint directory, 'smollm2-135m', or a hub id (online only)")
    sizes = p.add_argument_group("sizes (a fraction keeps that share, an integer sets the size)")
    sizes.add_argument("--mlp", default="1.0", help="MLP intermediate channels, e.g. 0.75 or 1152")
    sizes.add_argument("--heads", default="1.0", help="query heads (a multiple of the kept KV heads)")
    sizes.add_argument("--kv-heads", default="1.0", help="KV heads: whole groups of query heads go with them")
    sizes.add_argument("--layers", default="1.0", help="decoder blocks, e.g. 26")
    p.add_argument("--importance", default="activation",
                   help="how channels and heads are ranked (activation: Minitron's; taylor: |w * grad|; magnitude)")
    p.add_argument("--depth-importance", default="cosine",
                   help="how blocks are ranked: cosine (1 - cos(input, output)) or loss (its increase when skipped)")
    options.calibration(p)
    options.placement(p, "activation or magnitude scores, cosine depth; --device needs --stream")
    options.output(p)
    options.trust_remote_code(p)
    options.progress(p)


def shrink(args) -> int:
    settings = shrink_math.ShrinkSettings(mlp=args.mlp, heads=args.heads, kv_heads=args.kv_heads,
                                           layers=args.layers, importance=args.importance,
                                           depth_importance=args.depth_importance)
    manifest = shrink_stage.shrink_checkpoint(args.model, args.out, settings, calib=args.calib,
                                              calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len,
                                              seed=args.seed, overwrite=args.overwrite,
                                              trust_remote_code=args.trust_remote_code, stream=args.stream,
                                              device=args.device, progress=not args.no_progress)
    print(shrink_stage.summary_line(manifest, args.out))
    return 0


def verify_arguments(p):
    p.add_argument("path", help="pruned checkpoint directory, or an .onnx file (then pass --checkpoint)")
    p.add_argument("--checkpoint", help="with an .onnx file: the pruned checkpoint it came from")


def verify(args) -> int:
    print(verify_stage.verify_path(Path(args.path), args.checkpoint).summary())
    return 0


def distill_arguments(p):
    p.add_argument("--teacher", required=True,
                   help="the dense checkpoint the student was pruned from ('smollm2-135m' ok)")
    p.add_argument("--student", required=True,
                   help="pruned checkpoint directory (with sparsity.json), or an artifacts directory (its pruned/)")
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
    p.add_argument("--stream-teacher", action="store_true",
                   help="keep the teacher in its checkpoint (safetensors), read block by block at every forward: its "
                        "memory saved for a read of it per micro-batch; the same losses and student")
    options.seed(p)
    p.add_argument("--checkpoint-every", type=int, default=20, help="steps between resume points")
    options.progress(p)
    options.output(p)


def distill(args) -> int:
    settings = distill_settings.DistillSettings(steps=args.steps, max_minutes=args.max_minutes, seq_len=args.seq_len,
                                                batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                                                temperature=args.temperature, hidden_weight=args.hidden_weight,
                                                train_embeddings=args.train_embeddings, seed=args.seed,
                                                checkpoint_every=args.checkpoint_every)
    student = ArtifactsTree(args.student)
    student = student.pruned if student.pruned.is_dir() else Path(args.student)
    m = distill_stage.distill_checkpoint(args.teacher, student, args.out, data=args.data, settings=settings,
                                         overwrite=args.overwrite, progress=not args.no_progress,
                                         stream_teacher=args.stream_teacher)
    print(distill_stage.summary_line(m, args.out))
    return 0


COMMANDS = [
    Command("prune", "prune a checkpoint (N:M or unstructured) and write sparsity.json", prune_arguments, prune),
    Command("shrink", "structured pruning: remove MLP channels, heads, KV groups or blocks into a smaller dense "
                      "checkpoint (structure.json)", shrink_arguments, shrink),
    Command("verify", "check the sparsity pattern a sparsity.json claims", verify_arguments, verify),
    Command("distill", "recover a pruned model by distilling the dense one into it, masks held fixed",
            distill_arguments, distill),
]
