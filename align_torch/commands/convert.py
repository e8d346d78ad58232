"""align-torch convert SRC DST [--to native|hf] [--overwrite]"""

from __future__ import annotations

import argparse

HELP = "convert a checkpoint between the Hugging Face layout and align_torch's native format"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="model folder (native or Hugging Face layout) or Hub repo id")
    p.add_argument("dst", help="output folder, written atomically; it must be new or empty unless --overwrite")
    p.add_argument(
        "--to",
        choices=("native", "hf"),
        default="native",
        help="output layout: native (default) or hf (loadable by transformers' AlignModel)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DST if it is a checkpoint folder (config.json + weights, files only) that holds neither "
        "SRC nor the working directory; it is swapped for the new one in one step",
    )


def run(args: argparse.Namespace) -> int:
    from ..inference.convert import convert

    out = convert(args.src, args.dst, to=args.to, overwrite=args.overwrite)
    print(f"wrote {args.to} checkpoint to {out}")
    return 0
