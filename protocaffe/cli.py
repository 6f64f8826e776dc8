"""The `protocaffe` command line: one module per subcommand under protocaffe/commands/.

Each command module defines `add_parser(subparsers)` (which sets `func`) and keeps its
top-level imports light, so that `protocaffe compile` never pays for importing torch.
Exit codes: 0 ok (warnings allowed), 1 the input is wrong, 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import protocaffe.commands
from protocaffe import __version__
from protocaffe.diagnostics import CompileError, print_diagnostics

# Every public module under protocaffe/commands/ is a subcommand: adding one touches no list.
COMMANDS = tuple(
    sorted(m.name for m in pkgutil.iter_modules(protocaffe.commands.__path__) if m.name[0] != "_")
)

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line usage discovered after argument parsing (exit 2)."""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; when `argv` names a command, only that command is set up (its module
    imported, no entry for the others: what argparse says is the same with or without them),
    so one command never pays for another's imports."""
    parser = argparse.ArgumentParser(
        prog="protocaffe",
        description="Caffe prototxt compiler and runtime: check, shape-infer and run Caffe nets.",
    )
    parser.add_argument("--version", action="version", version=f"protocaffe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv or () if not a.startswith("-")), None)
    for name in COMMANDS:
        if chosen not in COMMANDS or name == chosen:
            importlib.import_module(f"protocaffe.commands.{name}").add_parser(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--plugin",
            action="append",
            default=[],
            metavar="MODULE",
            help="import user layers from MODULE (a module name or a .py file; repeatable)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)  # argparse itself exits 2 on usage errors
    try:
        if args.plugin:
            from protocaffe.plugins import load_plugins

            load_plugins(args.plugin)
        return int(args.func(args) or 0)
    except CompileError as err:
        print_diagnostics(err.diagnostics)
        return EXIT_INPUT
    except UsageError as err:
        command_parser(parser, args.command).print_usage(sys.stderr)
        print(f"protocaffe {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `protocaffe compile net.prototxt | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as err:
        # A bug, not the user's fault: one clear line instead of a traceback, unless asked.
        if os.environ.get("PROTOCAFFE_TRACEBACK"):
            raise
        print(
            f"protocaffe {args.command}: internal error: {type(err).__name__}: {err}\n"
            "  = hint: this is a protocaffe bug; set PROTOCAFFE_TRACEBACK=1 to see where, "
            "and please report it with the input",
            file=sys.stderr,
        )
        return EXIT_INPUT


def command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The subcommand's own parser (for its usage line)."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


if __name__ == "__main__":
    sys.exit(main())
