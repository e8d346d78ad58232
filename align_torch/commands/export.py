"""align-torch export --tower image|text|both --format onnx|pt2 --out DIR: each tower as its own graph."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import defaults
from ._common import _positive_int, add_model_class_argument

HELP = "export the image and/or text tower as ONNX or torch.export graphs, checked against the eager model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=defaults.MODEL,
        help=f"model folder (native or Hugging Face layout) or Hub repo id (default: {defaults.MODEL})",
    )
    p.add_argument("--tower", choices=("image", "text", "both"), default="both", help="what to export (default: both)")
    p.add_argument(
        "--format",
        choices=("onnx", "pt2"),
        default="onnx",
        help="onnx (torch's dynamo exporter, for ONNX Runtime) or pt2 (torch.export.save; load with "
        "torch.export.load) (default: onnx)",
    )
    p.add_argument("--out", required=True, help="output folder, written atomically; new or empty unless --overwrite")
    p.add_argument("--normalize", action="store_true", help="the graphs return unit-length embeddings")
    p.add_argument(
        "--image-size",
        type=_positive_int,
        nargs="+",
        metavar="N",
        help="square input size of each image graph (default: the processor's crop size); the first is "
        "image.onnx, the others image_N.onnx",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write NAME.int8.onnx (onnx only): the image graphs statically quantized, calibrated on "
        "--calibration-images; the text graph dynamically. Each is measured against its fp32 graph and refused "
        "(exit 2, nothing written) below a mean cosine of 0.99",
    )
    p.add_argument(
        "--calibration-images",
        nargs="+",
        metavar="IMAGE",
        help="real photos (files, folders, globs) that calibrate the int8 image graph and measure it; "
        "a few dozen like the ones you will embed (needed by --int8 with the image tower)",
    )
    p.add_argument("--opset", type=_positive_int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is an earlier export folder")
    add_model_class_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint.hub import resolve_model
    from ..data.transforms import crop_size
    from ..inference.export import export_towers
    from ..inference.loader import load_model
    from ..preprocess.processor import AlignProcessor

    if args.int8 and args.format != "onnx":
        raise ValueError("--int8 needs --format onnx (ONNX Runtime's quantization)")
    towers = ("image", "text") if args.tower == "both" else (args.tower,)
    if args.int8 and "image" in towers and not args.calibration_images:
        raise ValueError("--int8 of the image tower needs --calibration-images (real photos like those you embed)")
    source = resolve_model(args.model)
    processor = AlignProcessor.from_pretrained(source.folder)
    calibration, names = _calibration(args.calibration_images, processor) if args.int8 else (None, [])
    sizes = [(n, n) for n in args.image_size] if args.image_size else [crop_size(processor.image_processor)]
    model = load_model(source, "cpu", model_class=args.model_class)
    written = export_towers(
        model,
        processor.tokenizer,
        args.out,
        towers=towers,
        fmt=args.format,
        image_sizes=sizes,
        normalize=args.normalize,
        int8=args.int8,
        calibration=calibration,
        calibration_names=names,
        model_id=source.reference,
        overwrite=args.overwrite,
        opset=args.opset,
        progress=not args.quiet,
    )
    for meta in written.values():
        check = meta["parity"]
        print(
            f"{Path(args.out) / meta['file']}: {meta['tower']} tower, max abs diff to eager {check['max_abs']:.2e}, "
            f"lowest cosine {check['min_cosine']:.6f}"
        )
        if "quality" in meta:
            q = meta["quality"]
            print(
                f"  int8 against fp32 over {q['rows']} rows: mean cosine {q['mean_cosine']:.4f}, lowest {q['min_cosine']:.4f}"
            )
    return 0


def _calibration(inputs: list[str] | None, processor):
    """(N, 3, H, W) pixels of the calibration images through the model's processor, and their file names."""
    from ..data.images import list_images, load_image

    if not inputs:
        return None, []
    paths = list_images(inputs)
    if not paths:
        raise ValueError(f"--calibration-images {' '.join(inputs)}: no images found")
    pixels = processor.image_processor([load_image(p) for p in paths], return_tensors="pt")["pixel_values"]
    return pixels, [str(p) for p in paths]
