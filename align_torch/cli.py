"""The `align-torch` command: a thin dispatcher over align_torch.commands.*

Every failure is one line on stderr, `align-torch COMMAND: error: ...`, and an exit status: 2 for bad
arguments or inputs (a missing file, a malformed checkpoint, a refused destination), 1 for a failure while
running (a full disk, an internal error). `--debug` adds the traceback. A closed pipe (`| head`) ends the
command quietly with status 141, as a process killed by SIGPIPE would; Ctrl-C gives 130.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Iterator

# subcommand -> module under align_torch.commands
COMMANDS = {
    "init": "init",
    "convert": "convert",
    "zero-shot": "zero_shot",
    "embed": "embed",
    "embed-text": "embed_text",
    "search": "search",
    "index": "index",
    "serve": "serve",
    "summary": "summary",
    "finetune": "finetune",
    "eval": "eval",
    "clip-benchmark": "clip_benchmark",
    "compare": "compare",
    "probe": "probe",
    "export": "export",
}

EXIT_FAILURE = 1  # the command failed while running
EXIT_USAGE = 2  # bad arguments or inputs
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE
# Input and argument problems (with hub.HubError: a model not found); anything else is a failure while running.
USAGE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (argparse prints the usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of `align-torch`; an unknown option is reported by the subcommand it was given to, with that
    subcommand's --help (argparse would report it as the top-level command's)."""
    parser = _Parser(prog="align-torch", description="ALIGN image-text models in native PyTorch")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"align_torch.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of a failure"
        )
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args._parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def parse_one(command: str, argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    """The arguments of one subcommand run as a program of its own (`python convert/convert_align_hf.py`):
    usage and errors name `prog` (default: the script's file name), not `align-torch COMMAND`."""
    module = importlib.import_module(f"align_torch.commands.{COMMANDS[command]}")
    parser = _Parser(prog=prog, description=module.HELP)
    module.add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    parser.set_defaults(_run=module.run, command=command, _prefix=parser.prog)
    return parser.parse_args(argv)


def one_line(error: BaseException) -> str:
    """An exception as one line: its message with line breaks folded, or its type when it has none."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


@contextlib.contextmanager
def _one_line_warnings(command: str) -> Iterator[None]:
    """Warnings as `align-torch COMMAND: warning: ...` lines instead of Python's two-line source excerpts."""
    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, *_a, **_k: f"align-torch {command}: warning: {one_line(message)}\n"  # type: ignore[assignment]
    try:
        yield
    finally:
        warnings.formatwarning = previous


def main(argv: list[str] | None = None, *, only: str | None = None) -> int:
    """`align-torch ARGV`; with `only`, that one subcommand as a program of its own (ARGV are its arguments)."""
    from .checkpoint.hub import HubError

    args = parse(argv) if only is None else parse_one(only, argv)
    prefix = getattr(args, "_prefix", f"align-torch {args.command}")
    try:
        with _one_line_warnings(args.command):
            status = args._run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except BrokenPipeError:
        # Point stdout at /dev/null so Python's final flush does not report the closed pipe again.
        with contextlib.suppress(OSError, ValueError):  # stdout may be no file at all (redirected in-process)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        if isinstance(e, (*USAGE_ERRORS, HubError)):
            print(f"{prefix}: error: {one_line(e)}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(e, OSError):  # the system refused (a full disk, a lost mount): its message says it all
            print(f"{prefix}: error: {one_line(e)}", file=sys.stderr)
            return EXIT_FAILURE
        hint = "" if args.debug else " (run with --debug for the traceback)"
        print(f"{prefix}: error: {type(e).__name__}: {one_line(e)}{hint}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
