"""`python -m align_torch.train ...` (or `torchrun --nproc-per-node N -m align_torch.train ...`): the same
arguments as `align-torch finetune`."""

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
