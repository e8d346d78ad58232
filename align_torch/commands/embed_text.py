"""align-torch embed-text TEXTFILE --out FILE: embed one text per line ("-" reads stdin); row i is line i.

A blank line inside the file is refused, naming it: skipping it would shift every later row against its line.
Blank lines at the end of the file are ignored.

The output has the same format as `align-torch embed` (see align_torch.retrieval.embeddings_file) with the texts as
items, so `align-torch search` finds texts for a query just as it finds images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..defaults import TEXT_BATCH
from ._common import (
    add_batch_arguments,
    add_model_arguments,
    load_model_and_processor,
    output_file,
    resolve_model_option,
)

HELP = "embed the lines of a text file into an embeddings file for `align-torch search`"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "textfile",
        help="UTF-8 text file, one text per line (row i of the output is line i; a blank line is refused); "
        "'-' for standard input",
    )
    p.add_argument("--out", required=True, help="output embeddings file (.safetensors; replaced if it exists)")
    add_model_arguments(p)
    add_batch_arguments(p, batch_size=TEXT_BATCH, images=False)


def read_lines(source: str) -> list[str]:
    """The lines of a UTF-8 file (or stdin for '-'), stripped of surrounding whitespace, trailing blank lines
    dropped; a blank line before the last text is refused, naming its number."""
    try:
        raw = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{source!r} is not UTF-8 text: {e}") from None
    except IsADirectoryError:
        raise ValueError(f"{source!r} is a folder; expected a text file with one text per line") from None
    lines = [line.strip() for line in raw.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        number = lines.index("") + 1
        raise ValueError(
            f"{source!r} line {number} is blank: row i of the output is line i, so every line needs a text"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    from ..inference.backend import backend_of
    from ..inference.embed import embed_texts
    from ..retrieval.embeddings_file import EmbeddingFile
    from ..util.class_record import class_record

    out = output_file(args.out)
    texts = read_lines(args.textfile)
    if not texts:
        raise ValueError(f"{args.textfile!r} has no non-blank lines to embed")
    source = resolve_model_option(args)
    model, processor = load_model_and_processor(source, args.device, args.fuse, args.model_class, args.backend)
    vectors = embed_texts(model, processor.tokenizer, texts, batch_size=args.batch_size, progress=not args.quiet)
    EmbeddingFile(
        vectors=vectors,
        items=texts,
        kind="text",
        model=source.reference,
        backend=backend_of(model),
        model_class=class_record(type(model)),
    ).save(out)
    print(f"embedded {len(texts)} texts -> {out}", file=sys.stderr)
    return 0
