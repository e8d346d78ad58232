"""Options and steps shared by the everyday-job commands (zero-shot, embed, embed-text, search)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from .. import defaults
from ..inference.backend import BACKENDS
from ..util.device import DEVICES

if TYPE_CHECKING:
    import torch

    from ..checkpoint.hub import ModelSource
    from ..inference.embed import ImageEmbeddings
    from ..model.align import AlignModel
    from ..preprocess.processor import AlignProcessor


def add_model_arguments(p: argparse.ArgumentParser, default_model: str | None = defaults.MODEL) -> None:
    """--model (default_model None: the command finds the model itself) and --device."""
    default = default_model or "the model recorded in the embeddings file"
    p.add_argument(
        "--model",
        default=default_model,
        help=f"model folder (native or Hugging Face layout) or Hub repo id (default: {default})",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where to run the model; auto picks cuda, then mps, then cpu (default: auto)",
    )
    p.add_argument(
        "--no-fuse",
        dest="fuse",
        action="store_false",
        help="run the checkpoint's layers as loaded; by default BatchNorm and SiLU are folded into the convs "
        "(fuse_for_inference: the same embeddings to about 1e-5, faster)",
    )
    # The flag's first spelling, still accepted from scripts written before --no-fuse.
    p.add_argument("--unfused", dest="fuse", action="store_false", help=argparse.SUPPRESS)
    add_model_class_argument(p)
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=defaults.backend(),
        help="what runs each tower: torch, onnxruntime (the model as loaded exported to ONNX once, cached, "
        "checked on the first graph's first batch; CPU, float32) or auto: on the CPU ONNX Runtime for images "
        "(the faster tower alone, not faster end to end on 2 cores: docs/deploying.md) and torch for text when "
        "the export extra is installed (default: $ALIGN_TORCH_BACKEND, else torch)",
    )


def add_model_class_argument(p: argparse.ArgumentParser, flag: str = "--model-class", of: str = "") -> None:
    """--model-class MODULE:CLASS (or another `flag`, for the model `of` names)."""
    p.add_argument(
        flag,
        metavar="MODULE:CLASS",
        help=f"build the model{of} as this AlignModel subclass from your code (importable, e.g. "
        "my_variants:PreLNAlign) with the checkpoint's config and weights (default: the class the model folder or "
        "the embeddings record, else align_torch.AlignModel; another one than recorded is refused)",
    )


def add_class_folder_arguments(p: argparse.ArgumentParser, train: str, val: str) -> None:
    """--train-classes DIR and --val-classes DIR: class-per-folder images (one sub-folder per class), named apart
    from finetune's --train/--val (caption manifests). Their first spellings, --train-dir/--val-dir and
    --knn-train/--knn-val, are still read from older scripts; --help no longer shows them."""
    p.add_argument("--train-classes", metavar="DIR", help=f"class-per-folder images (a sub-folder per class) {train}")
    p.add_argument("--val-classes", metavar="DIR", help=f"class-per-folder images (a sub-folder per class) {val}")
    p.add_argument("--train-dir", "--knn-train", dest="train_classes", help=argparse.SUPPRESS)
    p.add_argument("--val-dir", "--knn-val", dest="val_classes", help=argparse.SUPPRESS)


def add_batch_arguments(p: argparse.ArgumentParser, batch_size: int, images: bool) -> None:
    """--batch-size, --quiet and, for image jobs, --workers and --strict."""
    p.add_argument(
        "--batch-size", type=_positive_int, default=batch_size, help=f"inputs per batch (default: {batch_size})"
    )
    if images:
        workers = defaults.image_workers()
        p.add_argument(
            "--workers",
            type=_non_negative_int,
            default=workers,
            help=f"image-loading processes; 0 loads in the main process (default: {workers})",
        )
        p.add_argument(
            "--strict",
            action="store_true",
            help="stop with exit status 1 at the first unreadable image (default: report it and go on)",
        )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_column_arguments(p: argparse.ArgumentParser) -> None:
    """--image-column and --caption-column, for Parquet input (found by name when not given)."""
    p.add_argument(
        "--image-column",
        metavar="NAME",
        help="Parquet column of the images: a {bytes, path} struct, raw bytes, or paths (default: found by name: "
        "image, img, jpg, png, webp, image_path, ...)",
    )
    p.add_argument(
        "--caption-column",
        metavar="NAME",
        help="Parquet column of the captions: a string or a list of strings (default: found by name: caption, "
        "captions, text, txt, sentences, ...)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def output_file(path: str) -> Path:
    """The --out path, refused early (before any model runs) when it names a folder."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise ValueError(f"--out {path!r} is a folder; give a file name such as embeddings.safetensors")
    return out


def resolve_model_option(args: argparse.Namespace) -> ModelSource:
    """--model resolved once for the whole command (a wrong --model-class is refused first, before a download)."""
    from ..checkpoint.hub import resolve_model
    from ..inference.loader import import_model_class

    if args.model_class:
        import_model_class(args.model_class)
    return resolve_model(args.model)


def load_model_and_processor(
    source: str | ModelSource,
    device: str | torch.device,
    fuse: bool = True,
    model_class: str | type[AlignModel] | None = None,
    backend: str = "torch",
) -> tuple[AlignModel, AlignProcessor]:
    """The command's --model, --device, --no-fuse, --model-class and --backend through the one loader
    (inference.loader.load_for_inference)."""
    from ..inference.loader import load_for_inference

    return load_for_inference(source, device, fuse=fuse, model_class=model_class, backend=backend)


def report_skipped(command: str, path: Path | str, reason: str) -> None:
    """One line on stderr per unreadable input; through tqdm so a progress bar stays intact."""
    tqdm.write(f"align-torch {command}: skipped {path}: {reason}", file=sys.stderr)


def embed_image_files(
    command: str,
    model: AlignModel,
    processor: AlignProcessor,
    paths: list[Path],
    args: argparse.Namespace,
    progress: bool,
    draft_decode: bool = False,
) -> ImageEmbeddings:
    """`embed_images` with the command's --batch-size, --workers and --strict, reporting each skipped file."""
    from ..inference.embed import embed_images

    return embed_images(
        model,
        processor.image_processor,
        paths,
        batch_size=args.batch_size,
        workers=args.workers,
        strict=args.strict,
        on_failure=lambda path, reason: report_skipped(command, path, reason),
        progress=progress,
        draft_decode=draft_decode,
    )
