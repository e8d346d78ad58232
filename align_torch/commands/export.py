"""align-torch export --tower image|text|both --format onnx|pt2 --out DIR: each tower as its own graph."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import defaults
from ._common import _positive_int

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
        help="also write NAME.int8.onnx: ONNX Runtime's dynamic int8 quantization of each graph (onnx only)",
    )
    p.add_argument("--opset", type=_positive_int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is an earlier export folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint.hub import resolve_model
    from ..data.transforms import crop_size
    from ..inference.export import export_towers
    from ..inference.loader import load_model
    from ..preprocess.processor import AlignProcessor

    if args.int8 and args.format != "onnx":
        raise ValueError("--int8 needs --format onnx (ONNX Runtime's dynamic quantization)")
    towers = ("image", "text") if args.tower == "both" else (args.tower,)
    source = resolve_model(args.model)
    processor = AlignProcessor.from_pretrained(source.folder)
    sizes = [(n, n) for n in args.image_size] if args.image_size else [crop_size(processor.image_processor)]
    model = load_model(source, "cpu")
    written = export_towers(
        model,
        processor.tokenizer,
        args.out,
        towers=towers,
        fmt=args.format,
        image_sizes=sizes,
        normalize=args.normalize,
        int8=args.int8,
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
    return 0
