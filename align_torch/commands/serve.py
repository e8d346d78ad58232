"""align-torch serve EMB_DIR [--port 8000] [--host 127.0.0.1]: a local search page over an embeddings folder or file.

The page shows the top-k images for a text or an uploaded image, as thumbnails with scores and captions; JSON at
/search?q=...&k=... and POST /search (an image). It listens on 127.0.0.1 unless --host says otherwise, and serves
only the collection's own images, by row id.
"""

from __future__ import annotations

import argparse
import sys

from ._common import add_model_arguments, load_model_and_processor

HELP = "serve a local search page (and a JSON API) over an embeddings folder or file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("embeddings", metavar="EMB_DIR", help="embeddings folder (or file) written by `align-torch embed`")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)",
    )
    p.add_argument("--exact", action="store_true", help="exact search even when the folder has an index")
    add_model_arguments(p, default_model=None)


def run(args: argparse.Namespace) -> int:
    from ..retrieval.collection import Collection
    from ..retrieval.serve import serve

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {args.port}")
    collection = Collection(args.embeddings, model=args.model, use_index=not args.exact, model_class=args.model_class)
    model_name, model_class = collection.require_model_name(), collection.query_model_class()
    collection.use_model(*load_model_and_processor(model_name, args.device, args.fuse, model_class, args.backend))
    for target in collection.targets:
        collection.index(target)  # a stale or broken index is refused now, not at the first query
    server = serve(collection, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"align-torch serve: http://{host}:{port}/ (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
