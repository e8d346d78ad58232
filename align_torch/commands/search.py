"""align-torch search EMBEDDINGS "query" [-k 10]: the items of an embeddings file closest to a text query.

The query is embedded with the model that made the file (recorded in it) unless --model names another;
scores are cosine similarities in [-1, 1]. Image paths are printed as `fileio.path_to_text` gives them: as they
are, or, for a name that is not UTF-8, as "file:" + percent-encoded bytes (`fileio.text_to_path` reverses it).
"""

from __future__ import annotations

import argparse
import json
import sys

from ._common import add_model_arguments, load_model_and_processor

HELP = "find the images (or texts) of an embeddings file that best match a text query"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("embeddings", help="file written by `align-torch embed` or `align-torch embed-text`")
    p.add_argument("query", help="the text to search for")
    p.add_argument("-k", "--top-k", dest="k", type=int, default=10, help="number of results (default: 10)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    add_model_arguments(p, default_model=None)


def run(args: argparse.Namespace) -> int:
    from ..embedding_index import EmbeddingIndex
    from ..embeddings import embed_texts
    from ..fileio import path_to_text

    if args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    index = EmbeddingIndex.load(args.embeddings)
    model_name = args.model or index.model
    model, processor = load_model_and_processor(model_name, args.device, fuse=not args.unfused)
    query = embed_texts(model, processor.tokenizer, [args.query])[0]  # (P,)
    hits = index.search(query, args.k)
    shown = [path_to_text(h.item) if index.kind == "image" else h.item for h in hits]
    if args.json:
        payload = {
            "query": args.query,
            "model": model_name,
            "results": [{"rank": h.rank, "item": item, "score": h.score} for h, item in zip(hits, shown, strict=True)],
        }
        json.dump(payload, sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        for h, item in zip(hits, shown, strict=True):
            print(f"{h.rank:>3}  {h.score:.4f}  {item}")
    return 0
