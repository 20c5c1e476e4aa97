"""`sparsetrt <command>`: one CLI, one module per room, each command's parser beside its handler.

  pipeline  run
  prune     prune, shrink, verify, distill
  export    export, quantize, lint
  build     build (alias engine)
  runtime   generate, parity
  serve     serve, loadtest
  adaptive  variants
  bench     bench (a group: sparsetrt/cli/bench/, one module per benchmark)

A command declares its options as a settings model (sparsetrt.settings; the parser is built from it,
sparsetrt.cli.options) and gets the validated model; every command takes --check: the settings and the plan are
checked (the command's `check`, which writes nothing) and printed, and nothing runs.
A handler forwards to its room and prints what the room formats. Errors print as one line, exit code 2;
Ctrl-C exits 130 and SIGTERM 143, both after every temporary output is removed (staged directories clean up on
the exception the signal raises). A command whose optional dependency is missing is still listed in --help, says
why, and refuses to run with that reason. Building the parser imports no heavy library (torch, onnxruntime): a
room names the stage modules it calls with lazy_import, so they load when its command runs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from sparsetrt.architectures import allow_remote_code
from sparsetrt.cli.options import ArgumentParser, add_settings, settings_from
from sparsetrt.errors import SparsetrtError
from sparsetrt.lazy import available, lazy_import
from sparsetrt.settings import Settings, trusts_remote_code

hf_logging = lazy_import("transformers.utils.logging")  # a command's run configures it; --help never imports it

ROOMS = ("pipeline", "prune", "export", "build", "runtime", "serve", "adaptive", "bench")

# How to get the optional dependencies commands may declare (module name -> install hint).
INSTALL_HINTS = {
    "fastapi": "pip install fastapi", "uvicorn": "pip install uvicorn", "httpx": "pip install httpx",
    "prometheus_client": "pip install prometheus-client", "matplotlib": "pip install 'sparsetrt[plots]'",
}


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    settings: type[Settings] | None = None  # the options, declared once (the parser is built from it)
    run: Callable[[Settings], int] | None = None
    check: Callable[[Settings], list[str]] | None = None  # --check: deeper checks that write nothing; the plan
    needs: tuple[str, ...] = ()      # importable modules the command cannot run without
    aliases: tuple[str, ...] = ()
    subcommands: tuple["Command", ...] = ()  # a group (`sparsetrt bench NAME`): these instead of arguments/run

    def missing(self) -> str | None:
        """Why this command cannot run here (the first missing module and how to get it), else None."""
        for module in self.needs:
            if importlib.util.find_spec(module) is None:
                return f"needs {module}, which is not installed ({INSTALL_HINTS.get(module, 'pip install ' + module)})"
        return None


def commands() -> list[Command]:
    """Every top-level command of every room, in room order (a group's subcommands inside it)."""
    return [c for room in ROOMS for c in importlib.import_module(f"sparsetrt.cli.{room}").COMMANDS]


def runnable_commands() -> list[tuple[str, Command]]:
    """("bench perf", its Command), ("prune", ...): every command a user can run, under the words they type."""
    def walk(prefix: str, command: Command):
        name = f"{prefix}{command.name}"
        if command.subcommands:
            for child in command.subcommands:
                yield from walk(f"{name} ", child)
        else:
            yield name, command
    return [pair for command in commands() for pair in walk("", command)]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command, its options built from the commands' settings models."""
    parser = ArgumentParser(prog="sparsetrt", description="2:4-sparse LLM deployment pipeline")
    parser.add_argument("--verbose", "-v", action="store_true", help="show library logs and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands():
        _add(sub, command)
    return parser


def _add(sub, command: Command) -> None:
    reason = command.missing()
    text = command.help + (f" [unavailable: {reason}]" if reason else "")
    p = sub.add_parser(command.name, help=text, description=text, aliases=list(command.aliases))
    if command.subcommands:
        group = p.add_subparsers(dest=f"{command.name}_command", required=True, metavar="NAME")
        for child in command.subcommands:
            _add(group, child)
    else:
        add_settings(p, command.settings)
        p.add_argument("--check", action="store_true",
                       help="check every setting and print the plan, then exit without writing anything")
        p.set_defaults(command_spec=command, command_words=p.prog)  # "sparsetrt bench serve"


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so the way out runs every cleanup (as KeyboardInterrupt does for
    SIGINT). A BaseException: no `except Exception` on the way may swallow it."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    main_thread = threading.current_thread() is threading.main_thread()  # signals can be caught there only
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None  # `serve` sets its own
    try:
        args = build_parser().parse_args(argv)
        _setup_logging(args.verbose)
        command: Command = args.command_spec
        settings = settings_from(args, command.settings)
        allow_remote_code(trusts_remote_code(settings))  # one decision for every checkpoint this command reads
        if reason := command.missing():
            raise SparsetrtError(f"`{args.command_words}` {reason}")
        if args.check:
            plan = command.check(settings) if command.check else []
            print("\n".join([f"{args.command_words}: every setting checked; nothing was written", *plan]))
            return 0
        return command.run(settings)
    except SparsetrtError as exc:
        print(f"sparsetrt: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sparsetrt: interrupted; no partial output was kept", file=sys.stderr)
        return 130
    except Terminated:
        print("sparsetrt: terminated (SIGTERM); no partial output was kept", file=sys.stderr)
        return 143
    finally:
        allow_remote_code(False)  # the decision was this command's (main runs many times in one process in tests)
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """A refusal stays one line whatever the user typed: control characters in it (a newline in an option's value)
    are shown escaped."""
    return CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        warnings.filterwarnings("ignore")
        # transformers draws a bar for every checkpoint load; ours (per layer) are the ones that matter. The
        # engine-build image has no transformers.
        if available("transformers"):
            hf_logging.disable_progress_bar()
