"""`sparsetrt run`: the whole pipeline from a config file users keep in git."""

from __future__ import annotations

from sparsetrt.cli import Command, options


def run_arguments(p):
    p.add_argument("--config", required=True, help="pipeline config (TOML or YAML), e.g. configs/demo.toml")
    p.add_argument("--out", help="override the config's output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a different run's artifacts")
    options.progress(p)


def run(args) -> int:
    from sparsetrt.config import load_config
    from sparsetrt.pipeline import run_pipeline

    config = load_config(args.config)
    if args.out:
        config.out = args.out
    summary = run_pipeline(config, overwrite=args.overwrite, progress=not args.no_progress)
    return 0 if summary["passed"] else 1


COMMANDS = [Command("run", "the whole pipeline from a config file (TOML or YAML)", run_arguments, run)]
