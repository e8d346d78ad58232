"""Convert an ALIGN checkpoint between the Hugging Face layout and align_torch's native format.

    python convert/convert_align_hf.py kakaobrain/align-base ./align-base-native
    python convert/convert_align_hf.py ./align-base-native ./align-base-hf --to hf

Same as `align-torch convert`; the key map lives in align_torch/checkpoint/hf_keys.py.
"""

import sys

from align_torch.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], only="convert"))
