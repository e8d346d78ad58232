"""The `align-torch` command: a thin dispatcher over align_torch.commands.*"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module under align_torch.commands
COMMANDS = {
    "convert": "convert",
    "zero-shot": "zero_shot",
    "embed": "embed",
    "embed-text": "embed_text",
    "search": "search",
    "summary": "summary",
    "finetune": "finetune",
    "eval": "eval",
    "clip-benchmark": "clip_benchmark",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align-torch", description="ALIGN image-text models in native PyTorch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"align_torch.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .hub import HubError
    from .weights import CheckpointError

    try:
        return args._run(args)
    except (CheckpointError, HubError, OSError, ValueError) as e:
        print(f"align-torch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"align-torch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
