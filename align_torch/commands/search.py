"""align-torch search EMB_DIR_OR_FILE "query" [-k 10] [--image Q.jpg] [--queries FILE] [--json]: the rows of an
embeddings folder (clip-retrieval layout) or file closest to text or image queries.

Queries are embedded with the model that made the embeddings (recorded there) unless --model names another,
and as the model class recorded there (a --model-class other than it is refused);
scores are cosine similarities in [-1, 1]. A folder with an index (`align-torch index`) is searched through it,
otherwise (or with --exact) exactly, a chunk at a time. --target text searches the caption embeddings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._common import add_model_arguments, load_model_and_processor

HELP = "find the images (or texts) of an embeddings folder or file that best match text or image queries"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "embeddings", metavar="EMB_DIR_OR_FILE", help="embeddings folder or file written by `align-torch embed`"
    )
    p.add_argument("query", nargs="?", help="the text to search for")
    p.add_argument("--image", metavar="IMAGE", help="search with this image instead of a text (image -> image)")
    p.add_argument(
        "--queries", metavar="FILE", help="a text file of queries, one per line (JSON Lines out with --json)"
    )
    p.add_argument("-k", "--top-k", dest="k", type=int, default=10, help="number of results per query (default: 10)")
    p.add_argument(
        "--target",
        choices=("image", "text"),
        help="which embeddings to search: image, or text for the captions' (default: image when there are any)",
    )
    p.add_argument("--exact", action="store_true", help="exact search even when the folder has an index")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    add_model_arguments(p, default_model=None)


def _queries(args: argparse.Namespace) -> list[str] | None:
    """The text queries (None for an image query); exactly one of QUERY, --image, --queries."""
    given = [
        name
        for name, value in (("QUERY", args.query), ("--image", args.image), ("--queries", args.queries))
        if value is not None
    ]
    if len(given) != 1:
        raise ValueError(f"give exactly one of QUERY, --image or --queries (got {', '.join(given) or 'none'})")
    if args.image is not None:
        return None
    if args.queries is not None:
        lines = [line.strip() for line in Path(args.queries).read_text(encoding="utf-8").splitlines()]
        if not any(lines):
            raise ValueError(f"--queries {args.queries!r} has no non-blank lines")
        return [line for line in lines if line]
    if not args.query.strip():
        raise ValueError("the query is empty")
    return [args.query]


def run(args: argparse.Namespace) -> int:
    from ..retrieval.collection import Collection

    if args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    texts = _queries(args)
    collection = Collection(args.embeddings, model=args.model, use_index=not args.exact, model_class=args.model_class)
    rows = collection.searchable_rows(collection.resolve_target(args.target))  # before any model loads
    if args.k > rows:
        print(
            f"align-torch search: note: -k {args.k} is more than the {rows} rows searched; showing all {rows}",
            file=sys.stderr,
        )
    model_name = collection.require_model_name()
    model_class = collection.query_model_class()  # the recorded class, unless --model-class (refused if other)
    collection.use_model(*load_model_and_processor(model_name, args.device, args.fuse, model_class, args.backend))
    if texts is None:
        labels, results = [args.image], collection.search(image=args.image, k=args.k, target=args.target)
    else:
        labels, results = texts, collection.search(text=texts, k=args.k, target=args.target)
    many = args.queries is not None
    for label, hits in zip(labels, results, strict=True):
        if args.json:
            payload = {"query": label, "model": model_name, "results": [h.to_dict() for h in hits]}
            json.dump(payload, sys.stdout, indent=None if many else 2, ensure_ascii=False)
            print()
            continue
        if many:
            print(f"# {label}")
        for h in hits:
            caption = f"  {h.caption}" if h.target == "image" and h.caption is not None and h.image_path else ""
            print(f"{h.rank:>3}  {h.score:.4f}  {h.item}{caption}")
    return 0
