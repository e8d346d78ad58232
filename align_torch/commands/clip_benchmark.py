"""align-torch clip-benchmark eval --dataset D --model align-base --pretrained kakaobrain/align-base ...

CLIP_benchmark's own CLI with ALIGN registered as `--model_type align_torch` (added when not given); every
argument after `clip-benchmark` is CLIP_benchmark's. Needs `pip install -e ".[clip-benchmark]"` in the clone.
"""

from __future__ import annotations

import argparse

HELP = "run CLIP_benchmark's CLI (its own arguments) with ALIGN registered as --model_type align_torch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs=argparse.REMAINDER, help="CLIP_benchmark arguments, e.g. eval --dataset cifar10 ...")


def run(args: argparse.Namespace) -> int:
    from ..evaluate.clip_benchmark import main

    if not args.args:
        raise ValueError("give CLIP_benchmark's arguments, e.g. align-torch clip-benchmark eval --dataset cifar10 ...")
    return main(args.args)
