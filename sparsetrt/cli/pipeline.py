"""`sparsetrt run`: the whole pipeline from a config file users keep in git."""

from __future__ import annotations

from sparsetrt.cli import Command, options
from sparsetrt.lazy import lazy_import

pipeline_config = lazy_import("sparsetrt.pipeline.config")
runner = lazy_import("sparsetrt.pipeline.runner")


def run_arguments(p):
    p.add_argument("--config", required=True, help="pipeline config (TOML or YAML), e.g. configs/demo.toml")
    p.add_argument("--out", help="override the config's output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a different run's artifacts")
    options.progress(p)


def run(args) -> int:
    config = pipeline_config.load_config(args.config)
    if args.out:
        config.out = args.out
    summary = runner.run_pipeline(config, overwrite=args.overwrite, progress=not args.no_progress)
    return 0 if summary["passed"] else 1


COMMANDS = [Command("run", "the whole pipeline from a config file (TOML or YAML)", run_arguments, run)]
