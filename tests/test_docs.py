"""Docs that stay true: every ``distnet …`` command line in the README and docs names a command and options that
exist, with ``--set`` keys that are config keys (and parses whole where it holds no placeholder), and every
relative link and figure path resolves."""

import argparse
import re
import shlex

import pytest

from distnet import config as C
from distnet.cli import COMMANDS, build_parser
from distnet.errors import UserError

from .helpers import ROOT


def doc_files():
    files = [ROOT / "README.md", ROOT / "cluster" / "README.md", ROOT / "datasets" / "README.md",
             *sorted((ROOT / "docs").rglob("*.md"))]
    files += [ROOT / "CHANGELOG.md"] if (ROOT / "CHANGELOG.md").exists() else []
    # a sweep's report.md is written by distnet sweep, not by hand
    return [f for f in files if f.exists() and "sweeps" not in f.relative_to(ROOT).parts]


def command_lines(text):
    """(line number, the text from ``distnet`` on) of every command in code blocks and inline code."""
    out, block, joined, start = [], False, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            block = not block
            continue
        if block:
            joined, start = (joined + " " + line.rstrip("\\").strip(), start or n)
            if line.rstrip().endswith("\\"):
                continue
            out += [(start, m) for m in _distnet(joined)]
            joined, start = "", 0
        else:
            for span in re.findall(r"`([^`]+)`", line):
                out += [(n, m) for m in _distnet(span) if span.lstrip().startswith(("distnet ", "mpiexec", "srun",
                                                                                       "mpirun"))]
    return out


def _distnet(text):
    text = text.split(" #")[0]  # a trailing comment
    i = text.find("distnet ")
    if i < 0 or (i > 0 and not text[i - 1].isspace()):
        return []
    return [text[i:].strip()]


PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]+(?:[=,.].*)?$|[|\[\]…<>]|\.\.\.$")


def _subparser(parser, argv):
    """The (sub-)parser for the command words at the start of ARGV, and how many words it took."""
    taken = 0
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or taken >= len(argv) or argv[taken] not in subs[0].choices:
            return parser, taken
        parser = subs[0].choices[argv[taken]]
        taken += 1


def check_command(cmd):
    """Problems with one documented command line ([] when it is right)."""
    try:
        words = shlex.split(cmd)
    except ValueError as e:
        return [f"cannot split: {e}"]
    for stop in (";", "&&", "||", "|", ">", "2>", "&"):
        if stop in words:
            words = words[:words.index(stop)]
    argv = words[1:]
    if not argv or argv[0] in ("COMMAND", "--help", "-h", "--version") or PLACEHOLDER.search(argv[0]):
        return []
    if argv[0] not in COMMANDS:
        return [f"no command {argv[0]!r}"]
    rest = []
    if "--" in argv:  # distnet run -- train ...: the job's own command line
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    parser = build_parser(argv)
    sub, taken = _subparser(parser, argv)
    if taken == len(argv) and not rest:  # a command named in a sentence, not a command line
        return []
    options = {o for a in sub._actions for o in a.option_strings}
    problems = []
    for i, word in enumerate(argv[taken:], taken):
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            if name not in options:
                problems.append(f"{' '.join(argv[:taken])} has no option {name}")
            if name == "--set":
                item = word.split("=", 1)[1] if "=" in word else (argv[i + 1] if i + 1 < len(argv) else "")
                key = item.split("=", 1)[0]
                if not PLACEHOLDER.search(key):
                    section, _, name_ = key.partition(".")
                    if section not in C.SCHEMA or (name_ not in C.SCHEMA[section]
                                                   and section not in C.OPEN_SECTIONS):
                        problems.append(f"--set {key}: not a config key")
    if not problems and not any(PLACEHOLDER.search(w) for w in argv):
        try:
            _, extra = parser.parse_known_args(argv)
        except (SystemExit, UserError):
            return [f"does not parse: distnet {' '.join(argv)}"]
        if extra:
            problems.append(f"unparsed {extra}")
    if rest and not problems:
        problems += check_command("distnet " + shlex.join(rest))
    return problems


def test_the_checker_catches_what_it_should():
    assert check_command("distnet train fashion-mlp --epochs 3") == []
    assert check_command("distnet trian fashion-mlp") == ["no command 'trian'"]
    assert check_command("distnet train fashion-mlp --batchsize 3") == ["train has no option --batchsize"]
    assert check_command("distnet train x --set train.epoch=3") == ["--set train.epoch: not a config key"]
    assert check_command("distnet plan cal --calibration c.json --nodes 1,2") == []
    assert check_command("distnet run -n 2 -- train my.toml --bogus 1") == ["train has no option --bogus"]
    assert check_command("distnet train CONFIG_OR_PRESET --epochs N") == []  # placeholders: options only


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_exists(path):
    bad = []
    for n, cmd in command_lines(path.read_text()):
        bad += [f"{path.name}:{n}: {cmd}: {p}" for p in check_command(cmd)]
    assert not bad, "\n".join(bad)


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_figure_resolves(path):
    bad = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        file = target.split("#", 1)[0]
        if not (path.parent / file).exists():
            bad.append(target)
    assert not bad, f"{path.relative_to(ROOT)}: broken: {bad}"


def test_there_are_commands_to_check():
    """The extraction finds the README's commands (a checker that finds nothing checks nothing)."""
    found = [cmd for _, cmd in command_lines((ROOT / "README.md").read_text())]
    assert len(found) >= 10 and any(c.startswith("distnet plan") for c in found)
