"""align-torch zero-shot IMAGE... --labels cat dog: rank labels for each image.

By default each label is a class name placed in the CLIP paper's 80 prompts (--templates imagenet, the
default of `eval` and fine-tuning evaluation too, so all three give one model the same zero-shot scores);
--templates simple uses "a photo of a {}." and --templates none uses labels that are already sentences as
written, which gives the model's own probabilities for them. An unreadable image is reported on stderr and
skipped; with --strict the first one stops the run with exit status 1.

--json prints {"model", "templates", "labels", "results": [{"image", "predictions": [{"label", "prob",
"logit"}, ...]}], "skipped": [{"image", "error"}]} with predictions best first. Image paths are written as
`fileio.path_to_text` gives them (a name that is not UTF-8 as "file:" + percent-encoded bytes).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..defaults import IMAGE_BATCH, TEMPLATES
from ..preprocess.templates import TEMPLATE_SETS
from ..util.fileio import path_to_text
from ._common import add_batch_arguments, add_model_arguments, embed_image_files, load_model_and_processor

HELP = "classify images against free-text labels (zero-shot), printing labels ranked by probability"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders (recursive) or glob patterns")
    p.add_argument("--labels", nargs="+", required=True, help='candidate labels, e.g. --labels "a cat" "a dog"')
    p.add_argument(
        "--templates",
        choices=sorted(TEMPLATE_SETS),
        default=TEMPLATES,
        help=f"prompt templates around each label: imagenet (80 prompts), simple, none (label as written) "
        f"(default: {TEMPLATES})",
    )
    p.add_argument("-k", "--top-k", dest="k", type=int, default=None, help="show only the k best labels per image")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    add_model_arguments(p)
    add_batch_arguments(p, batch_size=IMAGE_BATCH, images=True)


def run(args: argparse.Namespace) -> int:
    from ..data.images import ImageLoadError, list_images
    from ..evaluate.zero_shot import build_classifier, classify_embeddings

    if args.k is not None and args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    paths = list_images(args.images)
    model, processor = load_model_and_processor(args.model, args.device, args.fuse, args.model_class, args.backend)
    classifier = build_classifier(model, processor, args.labels, args.templates, progress=not args.quiet)  # (C, P)
    try:
        images = embed_image_files(
            "zero-shot", model, processor, paths, args, progress=not args.quiet and len(paths) > 1
        )
    except ImageLoadError as e:
        print(f"align-torch zero-shot: error: {e} (--strict)", file=sys.stderr)
        return 1
    ranked = classify_embeddings(model, classifier, images.vectors).ranked(args.labels, args.k) if images.paths else []
    if args.json:
        payload = {
            "model": str(args.model),
            "templates": args.templates,
            "labels": args.labels,
            "results": [
                {"image": path_to_text(path), "predictions": [p._asdict() for p in preds]}
                for path, preds in zip(images.paths, ranked, strict=True)
            ],
            "skipped": [{"image": path_to_text(p), "error": reason} for p, reason in images.failures],
        }
        json.dump(payload, sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        for path, preds in zip(images.paths, ranked, strict=True):
            print(path_to_text(path))
            for p in preds:
                print(f"  {p.prob:.4f}  {p.label}")
    if not images.paths:
        print(f"align-torch zero-shot: error: none of the {len(paths)} images could be read", file=sys.stderr)
        return 1
    return 0
