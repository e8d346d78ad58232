"""`python -m align_torch COMMAND ...` is `align-torch COMMAND ...`; the form torchrun launches:
`torchrun --nproc-per-node 8 -m align_torch embed shards/{00000..00999}.tar --out emb/`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
