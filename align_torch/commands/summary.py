"""align-torch summary [--model PATH_OR_ID_OR_PRESET] [--image-size N] [--tokens N] [--stages-only] [--json]"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..defaults import TEXT_LENGTH

HELP = "parameters, FLOPs and output shapes per stage and block of a model or preset (no weights are read)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="align-base",
        help="preset name (align-base, align-tiny, align-b0 .. align-b7, align-l2, the paper's grid "
        "align-{b1..b7,l2}-bert-{mini..large}), model folder or Hub repo id "
        "(only its config.json is read; default: the built-in align-base preset, the same architecture as "
        "kakaobrain/align-base, no download)",
    )
    p.add_argument("--image-size", type=int, default=None, help="image side in px (default: the config's)")
    p.add_argument("--tokens", type=int, default=TEXT_LENGTH, help=f"text length in tokens (default: {TEXT_LENGTH})")
    p.add_argument("--stages-only", action="store_true", help="one row per stage, no per-block rows")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from ..inference.loader import load_config
    from ..inspect.summary import summarize
    from ..model.config import PRESETS, PUBLISHED_SIZES, preset, published_sizes

    if args.model in PRESETS:
        config = preset(args.model)
    elif "/" not in args.model and not Path(args.model).exists():
        # Neither a preset nor a folder, and not shaped like a Hub id (owner/name): most likely a typo.
        raise ValueError(f"{args.model!r} is neither a preset ({', '.join(PRESETS)}) nor a model folder")
    else:
        config = load_config(args.model)
    summary = summarize(config, image_size=args.image_size, text_tokens=args.tokens)
    # Beside our count, what the towers' papers publish, for a grid preset or any model whose tower is one.
    published = PUBLISHED_SIZES.get(args.model) or published_sizes(config)
    if args.json:
        print(json.dumps({**summary.to_dict(), "published": list(published)}, indent=2))
    else:
        print(summary.table(blocks=not args.stages_only))
        for line in published:
            print(f"published: {line}")
    return 0
