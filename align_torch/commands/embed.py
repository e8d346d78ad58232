"""align-torch embed INPUT... --out DIR|FILE.safetensors: embed a collection of images for search.

INPUT is image files, folders (searched recursively for image suffixes) and glob patterns; or one manifest
(.csv/.tsv/.jsonl with `image` and optional `caption`); or Parquet (.parquet files, globs, folders of them) with
the images inside (datasets' {bytes, path} struct, img2dataset's jpg/png/webp bytes) or a path column, whose
other columns are carried into the metadata; or WebDataset shards (.tar files, a brace range such as
`shards/{00000..00999}.tar`, or a folder of .tar).

--out DIR writes the embeddings folder (align_torch.retrieval.layout: clip-retrieval's img_emb/text_emb/
metadata layout) partition by partition; a rerun finishes what is missing; under torchrun each rank takes
its share of the partitions. --out FILE.safetensors writes one embeddings file held in memory (see
align_torch.retrieval.embeddings_file), for image files only; with --strict the first unreadable image stops that run
with exit status 1 and nothing is written. Otherwise an unreadable image is reported and skipped.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..defaults import IMAGE_BATCH, PARTITION_SIZE
from ._common import (
    add_batch_arguments,
    add_column_arguments,
    add_model_arguments,
    embed_image_files,
    load_model_and_processor,
    output_file,
    report_skipped,
    resolve_model_option,
)

HELP = "embed images (files, folders, globs, a manifest, Parquet, WebDataset shards) into an embeddings folder or file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "images",
        nargs="*",
        metavar="INPUT",
        help="image files, folders (recursive), glob patterns; or one manifest (.csv/.tsv/.jsonl); or Parquet "
        "(.parquet, a glob, a folder of them); or WebDataset shards (.tar, shards/{00000..00999}.tar, a folder of .tar)",
    )
    p.add_argument(
        "--out",
        help="output folder (clip-retrieval layout, resumable, one partition at a time), or a .safetensors file "
        "(one file in memory, image files only; replaced if it exists)",
    )
    p.add_argument(
        "--partition-size",
        type=_positive_int,
        default=PARTITION_SIZE,
        help="images per partition for folder output; WebDataset input has one partition per shard, Parquet input "
        f"is cut at row-group boundaries (default: {PARTITION_SIZE})",
    )
    add_column_arguments(p)
    p.add_argument(
        "--dtype", choices=("float16", "float32"), default="float16", help="stored vectors (default: float16)"
    )
    p.add_argument("--status", metavar="DIR", help="print how far the embeddings folder DIR is, and exit")
    add_model_arguments(p)
    add_batch_arguments(p, batch_size=IMAGE_BATCH, images=True)
    p.add_argument(
        "--draft-decode",
        action="store_true",
        help="decode JPEGs at the smallest 1/2, 1/4 or 1/8 scale that still covers the model's input (PIL's draft "
        "mode): faster to read, other pixels (docs/fast-inference.md); recorded with the embeddings (default: off, "
        "exact)",
    )
    p.add_argument("--profile", action="store_true", help="print the seconds each stage took at the end")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    if args.status:
        from ..retrieval.status import folder_status

        print(folder_status(args.status).describe(args.status))
        return 0
    if not args.images or not args.out:
        print("align-torch embed: error: give INPUT... and --out (or --status DIR)", file=sys.stderr)
        return 2
    if args.out.endswith(".safetensors"):
        return _run_file(args)
    return _run_folder(args)


def _run_file(args: argparse.Namespace) -> int:
    from ..data.images import ImageLoadError, list_images
    from ..inference.backend import backend_of
    from ..retrieval.embeddings_file import EmbeddingFile
    from ..util.class_record import class_record

    out = output_file(args.out)
    paths = list_images(args.images)
    source = resolve_model_option(args)
    model, processor = load_model_and_processor(source, args.device, args.fuse, args.model_class, args.backend)
    try:
        result = embed_image_files("embed", model, processor, paths, args, not args.quiet, args.draft_decode)
    except ImageLoadError as e:
        print(f"align-torch embed: error: {e} (--strict: nothing written)", file=sys.stderr)
        return 1
    if not result.paths:
        print(
            f"align-torch embed: error: none of the {len(paths)} images could be read; nothing written", file=sys.stderr
        )
        return 1
    # Absolute paths, as the embeddings folder stores them: the file still names its images when read elsewhere.
    index = EmbeddingFile(
        vectors=result.vectors,
        items=[os.path.abspath(p) for p in result.paths],
        kind="image",
        model=source.reference,
        skipped=[{"item": os.path.abspath(p), "error": reason} for p, reason in result.failures],
        backend=backend_of(model),
        model_class=class_record(type(model)),
    )
    with result.stages.time("write"):
        index.save(out)
    skipped = f", skipped {len(result.failures)} unreadable" if result.failures else ""
    print(f"embedded {len(result.paths)} images{skipped} -> {out}", file=sys.stderr)
    if args.profile:
        print(result.stages.describe(len(paths), args.workers), file=sys.stderr)
    return 0


def _run_folder(args: argparse.Namespace) -> int:
    from ..retrieval.embed_folder import embed_collection
    from ..util.distributed import torchrun_env

    if args.strict:
        raise ValueError("--strict applies to a .safetensors output; a folder lists unreadable images per partition")
    summary = embed_collection(
        args.images,
        args.out,
        source=args.model,
        image_column=args.image_column,
        caption_column=args.caption_column,
        device=args.device,
        partition_size=args.partition_size,
        dtype=args.dtype,
        fuse=args.fuse,
        model_class=args.model_class,
        backend=args.backend,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.quiet,
        on_failure=lambda path, reason: report_skipped("embed", path, reason),
        draft_decode=args.draft_decode,
    )
    env = torchrun_env()
    who = f"rank {env.rank}/{env.world}: " if env.distributed else ""
    if summary.skipped and not summary.rows and not summary.already_done and not env.distributed:
        print(
            f"align-torch embed: error: none of the {summary.skipped} images could be read "
            f"({args.out} holds no embeddings)",
            file=sys.stderr,
        )
        return 1
    rate = f", {(summary.rows + summary.skipped) / summary.seconds:.1f} images/s" if summary.seconds else ""
    print(
        f"{who}{len(summary.mine)} of {summary.partitions} partitions: {len(summary.already_done)} already finished, "
        f"embedded {len(summary.embedded)} ({summary.rows} rows, {summary.skipped} unreadable skipped{rate}) -> {args.out}",
        file=sys.stderr,
    )
    if args.profile:
        print(summary.stages.describe(summary.rows + summary.skipped, args.workers), file=sys.stderr)
    return 0
