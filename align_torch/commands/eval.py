"""align-torch eval --model M [--zero-shot-dir DIR] [--retrieval FILE] [--train-classes DIR --val-classes DIR]

Figures to cite, in percent: zero-shot top-1/top-5 on a class-per-folder dataset (folder names are the class
names, underscores read as spaces; the 80 templates by default), image<->text recall@1/5/10 on a Karpathy-split
JSON (dataset_coco.json, dataset_flickr30k.json) or a caption manifest, k-NN top-1 (k=1, Kakao Brain's
ImageNet protocol, and k=20 weighted) of a val folder against a train folder, and with --linear-probe a
logistic-regression probe on the same features. Under torchrun every rank embeds its share of the images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..defaults import IMAGE_BATCH, TEMPLATES
from ..evaluate.knn import KNN_KS, KNN_TEMPERATURE
from ..evaluate.linear_probe import DEFAULT_L2_GRID
from ..evaluate.retrieval import KARPATHY_SPLITS
from ..preprocess.templates import TEMPLATE_SETS
from ._common import (
    add_batch_arguments,
    add_class_folder_arguments,
    add_column_arguments,
    add_model_arguments,
    load_model_and_processor,
    report_skipped,
)

if TYPE_CHECKING:
    from ..model.align import AlignModel
    from ..preprocess.processor import AlignProcessor

HELP = "evaluate a model: zero-shot top-1, retrieval recall@K, k-NN and linear-probe top-1"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--zero-shot-dir", help="folder with one sub-folder of images per class")
    p.add_argument(
        "--templates",
        choices=sorted(TEMPLATE_SETS),
        default=TEMPLATES,
        help=f"prompts for zero-shot (default: {TEMPLATES}, the 80 prompts of the CLIP and ALIGN papers)",
    )
    p.add_argument(
        "--class-names",
        metavar="FILE",
        help="zero-shot class names, one per line (or a JSON list) in sorted sub-folder order, for folders named "
        "by id such as ImageNet's synsets (default: the folder names)",
    )
    p.add_argument(
        "--retrieval",
        metavar="FILE",
        help="Karpathy-split JSON (dataset_coco.json / dataset_flickr30k.json), image-caption manifest, or Parquet "
        "(.parquet, a glob, a folder; images inside or a path column) for recall@1/5/10",
    )
    _add_retrieval_arguments(p)
    add_class_folder_arguments(p, "for the k-NN gallery and the probe's fit", "scored by k-NN and the probe")
    p.add_argument(
        "--knn-k",
        type=int,
        nargs="+",
        default=list(KNN_KS),
        help=f"neighbours for k-NN on --train-classes (default: {' '.join(map(str, KNN_KS))})",
    )
    p.add_argument(
        "--knn-temperature",
        type=float,
        default=KNN_TEMPERATURE,
        help=f"k-NN vote temperature (default: {KNN_TEMPERATURE})",
    )
    p.add_argument("--linear-probe", action="store_true", help="also fit a linear probe on --train-classes features")
    p.add_argument(
        "--probe-l2",
        type=float,
        nargs="+",
        default=list(DEFAULT_L2_GRID),
        metavar="L2",
        help="L2 strengths the linear probe's validation sweep tries (default: 1e-6 ... 1e2, one per decade)",
    )
    p.add_argument("--probe-solver", choices=("auto", "sklearn", "torch"), default="auto", help="(default: auto)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    add_model_arguments(p)
    add_batch_arguments(p, batch_size=IMAGE_BATCH, images=True)


def _add_retrieval_arguments(p: argparse.ArgumentParser) -> None:
    """How --retrieval is read: the Karpathy JSON's images, the split, captions per image, Parquet columns."""
    p.add_argument(
        "--image-root", metavar="DIR", help="folder of the Karpathy JSON's images (default: the JSON's folder)"
    )
    p.add_argument(
        "--split",
        help=f"split to evaluate: a Karpathy split ({', '.join(KARPATHY_SPLITS)}; default: test), or the value of a "
        "Parquet `split` column (default: every row)",
    )
    p.add_argument(
        "--captions-per-image",
        type=int,
        default=5,
        help="first N captions of each Karpathy or Parquet image; 0 keeps all (default: 5, as the published figures)",
    )
    add_column_arguments(p)


def _load(args: argparse.Namespace):
    """Model, processor and whether this run spans several torchrun ranks."""
    from ..util.distributed import setup_distributed

    env, device = setup_distributed(args.device)  # under torchrun: joins the group, one GPU per rank
    loaded = load_model_and_processor(args.model, device, args.fuse, args.model_class, args.backend)
    return (*loaded, env.distributed)


def _read_class_names(path: str) -> list[str]:
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        names = json.loads(text)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"--class-names {path}: expected a JSON list of strings")
        return names
    return [line.strip() for line in text.splitlines() if line.strip()]


def _retrieval_pairs(args: argparse.Namespace) -> tuple[list[tuple[Path, str]], dict[str, Any]]:
    from ..data import is_parquet, read_manifest, read_pairs
    from ..evaluate import read_karpathy

    path = Path(args.retrieval)
    if args.captions_per_image < 0:
        raise ValueError(f"--captions-per-image must be 0 or more, got {args.captions_per_image}")
    per_image = args.captions_per_image or None
    if path.suffix == ".json":
        split = args.split or "test"
        pairs = read_karpathy(path, args.image_root or path.parent, split, per_image)
        return pairs, {"format": "karpathy", "split": split, "captions_per_image": per_image}
    if is_parquet(args.retrieval):
        columns = dict(image_column=args.image_column, caption_column=args.caption_column)
        read = read_pairs(args.retrieval, split=args.split, captions_per_image=per_image, **columns)
        info = {"format": "parquet", "split": args.split, "captions_per_image": per_image}
        return [(pair.image, pair.caption) for pair in read.pairs], info
    return [(pair.image, pair.caption) for pair in read_manifest(path).pairs], {"format": "manifest"}


def run(args: argparse.Namespace) -> int:
    """Check the options, load the model, run each protocol asked for, and print the figures on rank 0."""
    from ..util.distributed import rank_and_world

    _check_options(args)
    pairs, retrieval_info = _retrieval_pairs(args) if args.retrieval else (None, {})
    model, processor, distributed = _load(args)
    rank, world = rank_and_world(distributed)
    common = dict(batch_size=args.batch_size, workers=args.workers, progress=not args.quiet, distributed=distributed)
    results: dict[str, Any] = {"model": str(args.model), "world_size": world}
    skipped: list[tuple[Path, str]] = []
    if args.zero_shot_dir:
        results["zero_shot"] = _zero_shot(model, processor, args, common, skipped)
    if pairs is not None:
        results["retrieval"] = _retrieval(model, processor, pairs, args, retrieval_info, common, skipped)
    if args.train_classes:
        results.update(_knn_and_probe(model, processor, args, common, skipped))
    if rank == 0:
        _print_results(results, skipped, args)
    return 0


def _check_options(args: argparse.Namespace) -> None:
    """Refuse, before any model loads, options that cannot run: nothing to evaluate, half a k-NN, bad numbers."""
    if not (args.zero_shot_dir or args.retrieval or args.train_classes or args.val_classes):
        raise ValueError(
            "nothing to evaluate: pass --zero-shot-dir, --retrieval, or --train-classes with --val-classes"
        )
    if bool(args.train_classes) != bool(args.val_classes):
        raise ValueError("k-NN and the linear probe need both --train-classes and --val-classes")
    if any(k < 1 for k in args.knn_k):
        raise ValueError(f"--knn-k values must be at least 1, got {args.knn_k}")
    if any(l2 <= 0 for l2 in args.probe_l2):
        raise ValueError(f"--probe-l2 values must be positive, got {args.probe_l2}")
    if args.knn_temperature <= 0:
        raise ValueError(f"--knn-temperature must be positive, got {args.knn_temperature}")


def _zero_shot(
    model: AlignModel, processor: AlignProcessor, args: argparse.Namespace, common: dict, skipped: list
) -> dict[str, Any]:
    """Zero-shot top-1/top-5 on --zero-shot-dir; its unreadable images are added to `skipped`."""
    from ..evaluate import zero_shot_accuracy

    names = _read_class_names(args.class_names) if args.class_names else None
    res = zero_shot_accuracy(model, processor, args.zero_shot_dir, args.templates, class_names=names, **common)
    skipped += res.skipped
    return {
        "protocol": "zero-shot classification: prompt-ensemble classifier, top-1/top-5",
        "dataset": str(args.zero_shot_dir),
        "class_names": args.class_names or "folder names",
        "templates": args.templates,
        "num_templates": len(TEMPLATE_SETS[args.templates]),
        "num_images": res.num_images,
        "num_classes": res.num_classes,
        "top1": res.top1,
        "top5": res.top5,
    }


def _retrieval(
    model: AlignModel,
    processor: AlignProcessor,
    pairs: list,
    args: argparse.Namespace,
    info: dict,
    common: dict,
    skipped: list,
) -> dict[str, Any]:
    """Image<->text recall@1/5/10 on the --retrieval pairs; unreadable images are added to `skipped`."""
    from ..evaluate import retrieval_recall

    res = retrieval_recall(model, processor, pairs, **common)
    skipped += res.skipped
    return {
        "protocol": "image-text retrieval recall@K: i2t per image (any caption), t2i per caption",
        "dataset": str(args.retrieval),
        **info,
        **res.as_dict(),
    }


def _knn_and_probe(
    model: AlignModel, processor: AlignProcessor, args: argparse.Namespace, common: dict, skipped: list
) -> dict[str, Any]:
    """k-NN top-1 of --val-classes against --train-classes and, with --linear-probe, a probe on the same features."""
    from ..evaluate import knn_scores, linear_probe_scores, train_val_features

    train, val = train_val_features(model, processor, args.train_classes, args.val_classes, **common)
    knn = knn_scores(train, val, args.knn_k, args.knn_temperature)
    skipped += knn.skipped
    out: dict[str, Any] = {
        "knn": {
            "protocol": "k-NN by cosine, train images as the gallery; k>1 votes weighted exp(cos/T)",
            "train": str(args.train_classes),
            "val": str(args.val_classes),
            "k": list(args.knn_k),
            "temperature": knn.temperature,
            "top1": {str(k): v for k, v in knn.top1.items()},
            "num_train": knn.num_train,
            "num_val": knn.num_val,
            "num_classes": knn.num_classes,
        }
    }
    if args.linear_probe:
        probe = linear_probe_scores(train, val, l2_grid=args.probe_l2, solver=args.probe_solver)
        out["linear_probe"] = {
            "protocol": "logistic regression on frozen features, L2 chosen on a held-out 20% of train",
            "top1": probe.top1,
            "l2": probe.l2,
            "val_top1": {f"{l2:g}": v for l2, v in probe.val_top1.items()},
            "num_train": probe.num_train,
            "num_val": probe.num_val,
            "num_test": probe.num_test,
            "solver": probe.solver,
        }
    return out


def _print_results(results: dict[str, Any], skipped: list[tuple[Path, str]], args: argparse.Namespace) -> None:
    """The unreadable images on stderr, then the figures: one JSON object with --json, else a line per protocol."""
    from ..data.pairs import image_name

    for path, reason in skipped:
        report_skipped("eval", image_name(path), reason)
    if args.json:
        results["skipped"] = [{"image": image_name(path), "error": reason} for path, reason in skipped]
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    for name, values in results.items():
        if isinstance(values, dict):
            shown = ", ".join(_show(k, v) for k, v in values.items() if k not in ("protocol", "val_top1"))
            print(f"{name}: {shown}")


def _show(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{key}={value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{key}@{k}={v:.2f}" for k, v in value.items())
    return f"{key}={value}"
