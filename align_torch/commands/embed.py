"""align-torch embed IMAGES... --out FILE: embed a collection of images for search.

IMAGES are files, folders (searched recursively for image suffixes) or glob patterns. The output is an
embeddings file (see align_torch.embedding_index: safetensors with normalised float32 "embeddings" and the
file list in its metadata), written atomically. An unreadable image is reported on stderr and skipped;
with --strict the first one stops the run with exit status 1 and nothing is written.
"""

from __future__ import annotations

import argparse
import sys

from ._common import add_batch_arguments, add_model_arguments, embed_image_files, load_model_and_processor, output_file

HELP = "embed images (files, folders, globs) into an embeddings file for `align-torch search`"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders (recursive) or glob patterns")
    p.add_argument("--out", required=True, help="output embeddings file (.safetensors; replaced if it exists)")
    add_model_arguments(p)
    add_batch_arguments(p, batch_size=32, images=True)


def run(args: argparse.Namespace) -> int:
    from ..data.images import ImageLoadError, list_images
    from ..embedding_index import EmbeddingIndex

    out = output_file(args.out)
    paths = list_images(args.images)
    model, processor = load_model_and_processor(args.model, args.device, fuse=not args.unfused)
    try:
        result = embed_image_files("embed", model, processor, paths, args, progress=not args.quiet)
    except ImageLoadError as e:
        print(f"align-torch embed: error: {e} (--strict: nothing written)", file=sys.stderr)
        return 1
    if not result.paths:
        print(
            f"align-torch embed: error: none of the {len(paths)} images could be read; nothing written", file=sys.stderr
        )
        return 1
    index = EmbeddingIndex(
        vectors=result.vectors,
        items=[str(p) for p in result.paths],
        kind="image",
        model=str(args.model),
        skipped=[{"item": str(p), "error": reason} for p, reason in result.failures],
    )
    index.save(out)
    skipped = f", skipped {len(result.failures)} unreadable" if result.failures else ""
    print(f"embedded {len(result.paths)} images{skipped} -> {out}", file=sys.stderr)
    return 0
