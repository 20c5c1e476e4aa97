"""Docs that cannot rot: every `sparsetrt ...` command README.md and docs/ show parses with today's CLI, and every
relative link in them resolves."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from sparsetrt.cli import build_parser
from sparsetrt.errors import SparsetrtError

ROOT = Path(__file__).resolve().parents[1]
COMMAND_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK_DOCS = [*COMMAND_DOCS, ROOT / "CHANGELOG.md", ROOT / "docker" / "README.md"]
PROGRAM = re.compile(r"^(?:\S*/)?sparsetrt(?=\s|$)")  # sparsetrt, .venv/bin/sparsetrt, $(BIN)/sparsetrt


def code_block_commands(text: str) -> list[str]:
    """Command lines inside ```sh blocks (continuations joined, comments and [optional] parts dropped)."""
    commands = []
    for block in re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if PROGRAM.match(line):
                commands.append(re.sub(r"\s*\[[^\]]*\]", "", line))
    return commands


def inline_commands(text: str) -> list[str]:
    """`sparsetrt ...` spans in running text (often partial: a command and some of its options)."""
    outside_blocks = re.sub(r"```.*?```", "", text, flags=re.S)
    return [span for span in re.findall(r"`([^`\n]+)`", outside_blocks) if PROGRAM.match(span)]


def words_of(command: str) -> list[str]:
    return shlex.split(PROGRAM.sub("", command, count=1))


def subparser(parser: argparse.ArgumentParser, words: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub)parser the leading words select, and the words left for it."""
    while words:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or words[0] not in actions[0].choices:
            break
        parser, words = actions[0].choices[words[0]], words[1:]
    return parser, words


def documented(kind) -> list[tuple[str, str]]:
    found = []
    for doc in COMMAND_DOCS:
        found += [(doc.relative_to(ROOT).as_posix(), command) for command in kind(doc.read_text())]
    return found


@pytest.mark.parametrize("doc,command", documented(code_block_commands))
def test_every_documented_command_parses(doc, command):
    """A command shown as a command line parses with today's options (placeholders in capitals stand for a value)."""
    try:
        build_parser().parse_args(words_of(command))
    except SparsetrtError as exc:
        pytest.fail(f"{doc}: `{command}` does not parse ({exc})")


@pytest.mark.parametrize("doc,command", documented(inline_commands))
def test_every_command_named_in_the_text_exists_with_its_options(doc, command):
    """A command named in running text (`sparsetrt prune --schedule`) exists, and so does each option it names."""
    parser, rest = subparser(build_parser(), words_of(command))
    assert parser.prog != "sparsetrt" or not rest or rest[0].startswith("-") or rest[0].isupper(), \
        f"{doc}: `{command}` names no command"
    known = {s for action in parser._actions for s in action.option_strings}
    unknown = [w.split("=")[0] for w in rest if w.startswith("--") and w.split("=")[0] not in known]
    assert unknown == [], f"{doc}: `{command}` names options `{parser.prog}` does not have"


def test_the_checkers_see_a_broken_command():
    text = "```sh\nsparsetrt prune --model m --out o --no-such-option \\\n  --seed 1\n```\n`sparsetrt shrink --mlpp 1`"
    [line] = code_block_commands(text)
    with pytest.raises(SparsetrtError, match="unrecognized arguments: --no-such-option"):
        build_parser().parse_args(words_of(line))
    parser, rest = subparser(build_parser(), words_of(inline_commands(text)[0]))
    assert parser.prog == "sparsetrt shrink" and "--mlpp" not in {s for a in parser._actions for s in a.option_strings}


def relative_links(doc: Path) -> list[str]:
    links = re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", doc.read_text(), flags=re.S))
    return [link for link in links if not re.match(r"[a-z]+:|#", link)]


@pytest.mark.parametrize("doc", LINK_DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc):
    missing = [link for link in relative_links(doc) if not (doc.parent / link.split("#")[0]).exists()]
    assert missing == []
