"""`sparsetrt run`: the whole pipeline from a config file users keep in git."""

from __future__ import annotations

from sparsetrt.cli import Command
from sparsetrt.lazy import lazy_import
from sparsetrt.settings import Progress, Settings, option

checks = lazy_import("sparsetrt.pipeline.checks")
pipeline_config = lazy_import("sparsetrt.pipeline.config")
runner = lazy_import("sparsetrt.pipeline.runner")


class RunCommand(Settings):
    config: str = option(..., "pipeline config (TOML or YAML), e.g. configs/demo.toml", min_length=1)
    out: str | None = option(None, "override the config's output directory", min_length=1)
    overwrite: bool = option(False, "replace a different run's artifacts")
    progress: Progress = option(Progress, "progress")

    def load(self):
        return pipeline_config.load_config(self.config, {"out": self.out} if self.out else None)


def run(s: RunCommand) -> int:
    summary = runner.run_pipeline(s.load(), overwrite=s.overwrite, progress=s.progress.progress)
    return 0 if summary["passed"] else 1


def check_run(s: RunCommand) -> list[str]:
    return checks.check_plan(s.load(), s.overwrite, convert=False)


COMMANDS = [Command("run", "the whole pipeline from a config file (TOML or YAML)", RunCommand, run, check_run)]
