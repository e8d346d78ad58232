"""align-torch compare MODEL_A MODEL_B --images DIR [--texts FILE] --out DIR"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from ..util.device import DEVICES
from ._common import _positive_int, add_model_class_argument, report_skipped

HELP = "CKA between every site of two models (image tower on --images, text tower on --texts): JSON and PNG"
MARKER = "cka.json"  # an --out folder holding it is one of ours, and may be replaced with --overwrite


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_a", metavar="MODEL_A", help="model folder or Hub repo id (rows of the matrices)")
    p.add_argument("model_b", metavar="MODEL_B", help="model folder or Hub repo id (columns)")
    p.add_argument("--images", required=True, help="folder of images (searched recursively); at least 4 readable")
    p.add_argument("--texts", help="text file, one text per line, to compare the text towers (default: image only)")
    p.add_argument("--out", required=True, help="folder to write cka.json, image_cka.png and text_cka.png")
    p.add_argument("--overwrite", action="store_true", help="replace an --out folder written by compare")
    p.add_argument("--biased", action="store_true", help="biased HSIC instead of the debiased estimator")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="inputs per batch (default: 16)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to run the models (default: auto)")
    add_model_class_argument(p, "--model-class-a", " MODEL_A")
    add_model_class_argument(p, "--model-class-b", " MODEL_B")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def read_texts(path: str) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    texts = [line for line in lines if line]
    if len(texts) < 4:
        raise ValueError(f"--texts {path}: CKA needs at least 4 non-empty lines, found {len(texts)}")
    return texts


def _refuse_hf_text_tower(name: str, model) -> None:
    if model.config.text_tower is not None:
        raise ValueError(
            f"{name}: its text tower is a transformers encoder ({model.config.text_tower}), whose layers compare "
            "cannot read; leave out --texts to compare the image towers"
        )


def run(args: argparse.Namespace) -> int:
    from ..data.images import list_images
    from ..inspect.compare import cka_matrix, image_batches, image_site_features, text_site_features
    from ..inspect.plots import draw_matrix
    from ..util.fileio import atomic_dir, atomic_file, check_destination
    from ._common import load_model_and_processor

    def ours(folder: Path) -> bool:
        return (folder / MARKER).is_file()

    check_destination(args.out, overwrite=args.overwrite, replaceable=ours, what="compare output folder")
    paths = list_images(args.images)
    texts = read_texts(args.texts) if args.texts else None
    results = {}
    features: dict[str, list] = {"image": [], "text": []}
    for name, model_class in ((args.model_a, args.model_class_a), (args.model_b, args.model_class_b)):
        model, processor = load_model_and_processor(
            name, args.device, fuse=False, model_class=model_class
        )  # unfused: hooks
        if texts is not None:
            _refuse_hf_text_tower(name, model)
        batches = image_batches(
            paths,
            processor.image_processor.preprocess_one,
            args.batch_size,
            lambda p, r: report_skipped("compare", p, r),
        )
        bar = {"disable": args.quiet, "unit": "batch"}
        total = -(-len(paths) // args.batch_size)
        features["image"].append(image_site_features(model, tqdm(batches, f"compare {name}: images", total, **bar)))
        if texts is not None:
            tokens = [
                dict(processor(text=texts[i : i + args.batch_size], padding=True))
                for i in range(0, len(texts), args.batch_size)
            ]
            features["text"].append(text_site_features(model, tqdm(tokens, f"compare {name}: texts", **bar)))
        del model
    for tower, (a, b) in ((t, f) for t, f in features.items() if f):
        results[tower] = cka_matrix(a, b, debiased=not args.biased)
    with atomic_dir(args.out, overwrite=args.overwrite, replaceable=ours, what="compare output folder") as tmp:
        report = {
            "model_a": args.model_a,
            "model_b": args.model_b,
            "debiased": not args.biased,
            **{tower: m.to_dict() for tower, m in results.items()},
        }
        with atomic_file(tmp / MARKER) as f:
            f.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        for tower, m in results.items():
            title = f"{tower} tower CKA ({m.num_inputs} inputs): rows {args.model_a}, columns {args.model_b}"
            draw_matrix(m, title).save(tmp / f"{tower}_cka.png")
    for tower, m in results.items():
        _say_constant_sites(tower, m, args)
        diagonal = m.diagonal()
        print(f"{tower}: {m.num_inputs} inputs, diagonal CKA " + " ".join(f"{v:.3f}" for v in diagonal.values()))
    print(f"wrote {args.out}")
    return 0


def _say_constant_sites(tower: str, m, args: argparse.Namespace) -> None:
    """One note per site left out of the matrix, naming it and its model."""
    for which, model, sites in (("A", args.model_a, m.constant_a), ("B", args.model_b, m.constant_b)):
        for site in sites:
            print(
                f"align-torch compare: note: {tower} site {site} of model {which} ({model}) is left out: its "
                "features do not vary over the inputs, so it has no CKA",
                file=sys.stderr,
            )
