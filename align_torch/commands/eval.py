"""align-torch eval --model M [--zero-shot-dir DIR] [--retrieval MANIFEST] [--knn-train DIR --knn-val DIR]

Figures to cite: zero-shot top-1 on a class-per-folder dataset (folder names are the class names, with
underscores read as spaces), image<->text recall@1/5/10 on a caption manifest, and k-NN top-1 (k=1 by
default, Kakao Brain's ImageNet protocol) of a val folder against a train folder. Percentages.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..templates import TEMPLATE_SETS
from ._common import add_batch_arguments, add_model_arguments, load_model_and_processor, report_skipped

HELP = "evaluate a model: zero-shot top-1, retrieval recall@K, k-NN top-1"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--zero-shot-dir", help="folder with one sub-folder of images per class")
    p.add_argument(
        "--templates",
        choices=sorted(TEMPLATE_SETS),
        default="imagenet",
        help="prompts for zero-shot (default: imagenet)",
    )
    p.add_argument("--retrieval", metavar="MANIFEST", help="image-caption manifest (.csv/.tsv/.jsonl) for recall@K")
    p.add_argument("--knn-train", metavar="DIR", help="class-per-folder train images for k-NN")
    p.add_argument("--knn-val", metavar="DIR", help="class-per-folder val images for k-NN")
    p.add_argument("-k", "--knn-k", dest="knn_k", type=int, default=1, help="neighbours for k-NN (default: 1)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    add_model_arguments(p)
    add_batch_arguments(p, batch_size=32, images=True)


def run(args: argparse.Namespace) -> int:
    from ..data import read_manifest
    from ..evaluate import knn_accuracy, retrieval_recall, zero_shot_accuracy

    if not (args.zero_shot_dir or args.retrieval or args.knn_train or args.knn_val):
        raise ValueError("nothing to evaluate: pass --zero-shot-dir, --retrieval, or --knn-train with --knn-val")
    if bool(args.knn_train) != bool(args.knn_val):
        raise ValueError("k-NN needs both --knn-train and --knn-val")
    model, processor = load_model_and_processor(args.model, args.device, fuse=not args.unfused)
    common = dict(batch_size=args.batch_size, workers=args.workers, progress=not args.quiet)
    results: dict[str, object] = {"model": args.model}
    skipped = []
    if args.zero_shot_dir:
        res = zero_shot_accuracy(model, processor, args.zero_shot_dir, args.templates, **common)
        results["zero_shot"] = {"top1": res.top1, "num_images": res.num_images, "num_classes": res.num_classes}
        skipped += res.skipped
    if args.retrieval:
        pairs = [(pair.image, pair.caption) for pair in read_manifest(args.retrieval).pairs]
        res = retrieval_recall(model, processor, pairs, **common)
        results["retrieval"] = res.as_dict()
        skipped += res.skipped
    if args.knn_train:
        res = knn_accuracy(model, processor, args.knn_train, args.knn_val, k=args.knn_k, **common)
        results["knn"] = {"k": args.knn_k, "top1": res.top1, "num_images": res.num_images}
        skipped += res.skipped
    for path, reason in skipped:
        report_skipped("eval", path, reason)
    if args.json:
        results["skipped"] = [{"image": str(path), "error": reason} for path, reason in skipped]
        json.dump(results, sys.stdout, indent=2)
        print()
        return 0
    for name, values in results.items():
        if isinstance(values, dict):
            shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            print(f"{name}: {shown}")
    return 0
