"""align-torch index EMB_DIR [--kind auto|flat|hnsw|ivf-flat|ivf-pq] [--max-memory 4GB] [--out FILE]: a FAISS index
of an embeddings folder, read a chunk at a time, written atomically beside its JSON description.

`auto` chooses the kind from the number of vectors, their dimension and --max-memory as autofaiss does (see
align_torch.retrieval.index). `align-torch search` and `serve` use the index when it is there.
"""

from __future__ import annotations

import argparse
import sys

HELP = "build a FAISS index (flat, HNSW, IVF-PQ, ...) of an embeddings folder for fast search"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..retrieval.index import KINDS

    p.add_argument("folder", metavar="EMB_DIR", help="embeddings folder (img_emb/, text_emb/, metadata/)")
    p.add_argument(
        "--kind", choices=KINDS, default="auto", help="index kind (default: auto, chosen from N, dims and --max-memory)"
    )
    p.add_argument(
        "--max-memory",
        default="4GB",
        help="memory for the index and the build's buffers, e.g. 512MB, 16GB (default: 4GB)",
    )
    p.add_argument(
        "--modality", choices=("image", "text"), default="image", help="which embeddings to index (default: image)"
    )
    p.add_argument("--out", help="index file (default: EMB_DIR/index/MODALITY.index; its description is OUT.json)")
    p.add_argument(
        "--quantize",
        choices=("int8", "binary"),
        help="a compressed flat index instead: int8 (FAISS scalar quantizer, 4x smaller than float32) or binary "
        "(sign bits, 32x smaller); searches rescore the top candidates from the float vectors on disk",
    )
    p.add_argument("--dry-run", action="store_true", help="print the chosen index and its memory, build nothing")


def run(args: argparse.Namespace) -> int:
    from ..retrieval.folder import EmbeddingFolder
    from ..retrieval.index import article, build_index, memory_per_million, parse_memory, plan_index

    folder = EmbeddingFolder(args.folder)
    budget = parse_memory(args.max_memory)
    plan = plan_index(folder.count(args.modality), folder.dim(args.modality), budget, args.kind, args.quantize)
    summary = (
        f"{plan.kind} index {plan.factory} of {plan.count:,} x {plan.dim} {args.modality} vectors, "
        f"about {plan.index_bytes / 2**20:.0f} MB"
    )
    if args.quantize:
        per_million = memory_per_million(plan.dim)
        summary += (
            f"; {per_million[f'{args.quantize} + rescore'] / 2**20:.0f} MB per million vectors "
            f"(float32 flat: {per_million['flat'] / 2**20:.0f} MB)"
        )
    if args.dry_run:
        print(summary)
        return 0
    print(f"align-torch index: building {article(plan.kind)} {summary}", file=sys.stderr)
    try:
        built = build_index(folder, args.modality, args.kind, budget, args.out, quantize=args.quantize)
    except ImportError as e:  # FAISS is an optional extra
        print(f"align-torch index: error: {e}", file=sys.stderr)
        return 2
    print(f"indexed {plan.count:,} vectors in {built.seconds:.1f} s -> {built.path}", file=sys.stderr)
    return 0
