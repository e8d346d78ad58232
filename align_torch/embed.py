"""`python -m align_torch.embed ARGS` is `align-torch embed ARGS`; the form torchrun launches:
`torchrun --nproc-per-node 8 -m align_torch.embed shards/{00000..00999}.tar --out emb/`."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
