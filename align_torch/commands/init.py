"""align-torch init DIR [--preset align-tiny|align-base|align-l2] [--seed N] [--loss softmax|sigmoid]"""

from __future__ import annotations

import argparse

HELP = "write a random-weight model with processor files to a new folder, to try every command offline"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..train.starter import STARTER_PRESETS

    p.add_argument("folder", help="where to write the model; must not exist yet, or be empty")
    p.add_argument(
        "--preset",
        choices=STARTER_PRESETS,
        default="align-tiny",
        help="architecture: align-tiny (a few MB, seconds per command), align-base (the real model's size, "
        "about 700 MB) or align-l2 (the paper's EfficientNet-L2 + BERT-large, about 3.2 GB; refused when the "
        "memory to build it is not free), or a cell of the paper's encoder grid, align-{b1..b7,l2}-bert-"
        "{mini,small,medium,base,large} (default: align-tiny)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    p.add_argument(
        "--loss",
        choices=("softmax", "sigmoid"),
        default="softmax",
        help="the loss the model is for: softmax (ALIGN's) or sigmoid (SigLIP's, with its from-scratch start: "
        "temperature 0.1, i.e. t' = log 10, and a logit bias of -10) (default: softmax)",
    )


def run(args: argparse.Namespace) -> int:
    from ..train.starter import write_starter_checkpoint

    folder = write_starter_checkpoint(args.folder, args.preset, seed=args.seed, loss=args.loss)
    print(f"wrote a random-weight {args.preset} model to {folder} (its embeddings mean nothing; use --model {folder})")
    return 0
