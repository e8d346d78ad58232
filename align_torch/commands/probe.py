"""align-torch probe --model M --train-classes DIR --val-classes DIR --out DIR

The model was once a positional argument (`probe MODEL ...`); that form is still read from older scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from .. import defaults
from ..util.device import DEVICES
from ._common import _positive_int, add_class_folder_arguments, add_model_class_argument, report_skipped

HELP = "linear-probe top-1 at every image site (stem, each stage, the embedding): JSON and a PNG plot"
MARKER = "probe.json"  # an --out folder holding it is one of ours, and may be replaced with --overwrite


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", help=f"model folder (native or Hugging Face layout) or Hub repo id (default: {defaults.MODEL})"
    )
    p.add_argument("old_model", nargs="?", metavar="MODEL", help=argparse.SUPPRESS)  # the first, positional form
    add_class_folder_arguments(p, "the probes are fitted on", "the probes are scored on")
    p.add_argument("--out", required=True, help="folder to write probe.json and probe.png")
    p.add_argument("--overwrite", action="store_true", help="replace an --out folder written by probe")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="images per batch (default: 16)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to run the model (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split for the L2 sweep (default: 0)")
    add_model_class_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..evaluate.site_probe import probe_sites
    from ..inspect.plots import draw_bars
    from ..util.fileio import atomic_dir, atomic_file, check_destination
    from ._common import load_model_and_processor

    def ours(folder: Path) -> bool:
        return (folder / MARKER).is_file()

    _check_options(args)
    check_destination(args.out, overwrite=args.overwrite, replaceable=ours, what="probe output folder")
    model, processor = load_model_and_processor(args.model, args.device, fuse=False, model_class=args.model_class)
    results = probe_sites(
        model,
        processor.image_processor.preprocess_one,
        args.train_classes,
        args.val_classes,
        batch_size=args.batch_size,
        seed=args.seed,
        on_failure=lambda path, reason: report_skipped("probe", path, reason),
        on_constant=lambda site: print(
            f"align-torch probe: note: site {site} is left out: its features do not vary over the images",
            file=sys.stderr,
        ),
        progress=not args.quiet,
    )
    with atomic_dir(args.out, overwrite=args.overwrite, replaceable=ours, what="probe output folder") as tmp:
        report = {"model": args.model, "train_dir": args.train_classes, "val_dir": args.val_classes}
        report["sites"] = [asdict(r) for r in results]
        with atomic_file(tmp / MARKER) as f:
            f.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        bars = [(r.site, r.top1) for r in results]
        draw_bars(bars, f"linear-probe top-1 (%) per image site: {args.model}", top=100.0).save(tmp / "probe.png")
    for r in results:
        print(f"{r.site:32} top-1 {r.top1:6.2f}%  ({r.dims} dims, l2 {r.l2:g})")
    print(f"wrote {args.out}")
    return 0


def _check_options(args: argparse.Namespace) -> None:
    """The model given once (--model, or the older positional MODEL), else the default; both class folders."""
    if args.model is not None and args.old_model is not None:
        raise ValueError(
            f"the model is given twice, as --model {args.model!r} and as the positional MODEL {args.old_model!r}; "
            "give it once, with --model"
        )
    args.model = args.model or args.old_model or defaults.MODEL
    missing = [flag for flag in ("--train-classes", "--val-classes") if not getattr(args, flag[2:].replace("-", "_"))]
    if missing:
        raise ValueError(f"probe needs {' and '.join(missing)} (class-per-folder images)")
