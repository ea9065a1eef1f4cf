"""Generate xsproto's bash completion from its argument parser.

``python -m tools.completion`` rewrites xsproto/data/xsproto.bash (which the wheel
carries and ``xsproto install-host`` installs); ``--check`` exits 1 if it is stale. A
static file, because a completion that ran ``xsproto`` would pay Python's start-up on
every Tab. It reads argparse's own tables (``_actions``), which the standard library
has kept stable for as long as subparsers exist.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from xsproto.cli import build_parser

TARGET = Path(__file__).resolve().parents[1] / "xsproto" / "data" / "xsproto.bash"


@dataclass(frozen=True)
class Command:
    """What completion needs of one parser: its options, those that take a value, the
    fixed choices of some, and its subcommands."""

    options: list[str]
    takes_value: list[str]
    choices: dict[str, list[str]]
    subcommands: dict[str, Command]


def describe(parser: argparse.ArgumentParser) -> Command:
    options: list[str] = []
    takes_value: list[str] = []
    choices: dict[str, list[str]] = {}
    subcommands: dict[str, Command] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            subcommands = {name: describe(p) for name, p in action.choices.items()}
        elif action.option_strings:
            options += action.option_strings
            if action.nargs != 0:
                takes_value += action.option_strings
                if action.choices:
                    for option in action.option_strings:
                        choices[option] = [str(c) for c in action.choices]
    return Command(options, takes_value, choices, subcommands)


def _words(words: list[str]) -> str:
    return shlex.quote(" ".join(words))


def render(parser: argparse.ArgumentParser) -> str:
    top = describe(parser)
    lines = [
        "# bash completion for xsproto(8): generated from xsproto's argument parser by",
        "# 'python -m tools.completion'. Do not edit.",
        "_xsproto() {",
        '    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}',
        "    local cmd='' i opts takes",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        "        case ${COMP_WORDS[i]} in",
        f"            {'|'.join(top.takes_value)}) ((i++)) ;;",
        "            -*) ;;",
        "            *) cmd=${COMP_WORDS[i]}; break ;;",
        "        esac",
        "    done",
        "    case $cmd in",
        f"        '') opts={_words(top.options)}; takes={_words(top.takes_value)}",
        f"            [[ $cur == -* ]] || opts={_words(list(top.subcommands))} ;;",
    ]
    for name, command in top.subcommands.items():
        lines.append(f"        {name}) opts={_words(command.options)}; "
                     f"takes={_words(command.takes_value)} ;;")
    lines += ["        *) return ;;", "    esac", '    case "$cmd $prev" in']
    for prefix, command in [("", top), *top.subcommands.items()]:
        for option, values in command.choices.items():
            lines.append(f"        {shlex.quote(f'{prefix} {option}')}) "
                         f"COMPREPLY=($(compgen -W {_words(values)} -- \"$cur\")); return ;;")
    lines += [
        "    esac",
        "    # An option's value, or a positional argument: bash's default (file names).",
        '    [[ " $takes " == *" $prev "* ]] && return',
        "    if [[ -z $cmd || $cur == -* ]]; then",
        '        COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
        "    fi",
        "}",
        "complete -o default -F _xsproto xsproto",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = render(build_parser())
    if argv == ["--check"]:
        stale = not TARGET.is_file() or TARGET.read_text(encoding="utf-8") != text
        if stale:
            print(f"{TARGET} is stale: run python -m tools.completion", file=sys.stderr)
        return int(stale)
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
