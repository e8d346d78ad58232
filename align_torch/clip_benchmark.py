"""CLIP_benchmark for ALIGN without forking it: `python -m align_torch.clip_benchmark eval ...` runs
CLIP_benchmark's own CLI with `--model_type align_torch` registered (see align_torch.evaluate.clip_benchmark),
and `load_align` is the loader for code that calls CLIP_benchmark's metric functions directly."""

import sys

from .evaluate.clip_benchmark import MODEL_TYPE, load_align, main, register

__all__ = ["MODEL_TYPE", "load_align", "main", "register"]

if __name__ == "__main__":
    sys.exit(main())
