"""align-torch probe MODEL --train-dir D --val-dir D --out DIR"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..util.device import DEVICES
from ._common import _positive_int, add_model_class_argument, report_skipped

HELP = "linear-probe top-1 at every image site (stem, each stage, the embedding): JSON and a PNG plot"
MARKER = "probe.json"  # an --out folder holding it is one of ours, and may be replaced with --overwrite


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model folder or Hub repo id")
    p.add_argument("--train-dir", required=True, help="class-per-folder images the probes are fitted on")
    p.add_argument("--val-dir", required=True, help="class-per-folder images the probes are scored on")
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

    check_destination(args.out, overwrite=args.overwrite, replaceable=ours, what="probe output folder")
    model, processor = load_model_and_processor(args.model, args.device, fuse=False, model_class=args.model_class)
    results = probe_sites(
        model,
        processor.image_processor.preprocess_one,
        args.train_dir,
        args.val_dir,
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
        report = {"model": args.model, "train_dir": args.train_dir, "val_dir": args.val_dir}
        report["sites"] = [asdict(r) for r in results]
        with atomic_file(tmp / MARKER) as f:
            f.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        bars = [(r.site, r.top1) for r in results]
        draw_bars(bars, f"linear-probe top-1 (%) per image site: {args.model}", top=100.0).save(tmp / "probe.png")
    for r in results:
        print(f"{r.site:32} top-1 {r.top1:6.2f}%  ({r.dims} dims, l2 {r.l2:g})")
    print(f"wrote {args.out}")
    return 0
