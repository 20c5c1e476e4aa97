"""The orchestrators: they sit above every stage, beside the CLI, and nothing below imports them.

  config    the pipeline config file (TOML or YAML): one section per stage, each the stage's own settings
  checks    what needs the model and the machine, checked before any work; the plan `--check` prints
  runner    `sparsetrt run`: [shrink ->] prune -> export -> parity [-> quantize] [-> build] from one config
  variants  `sparsetrt variants`: the pipeline's runs for a set of configs, then the variant set timed on them
"""

from sparsetrt.pipeline.runner import run_pipeline

__all__ = ["run_pipeline"]
