"""Where images and image-caption pairs come from, one reader per input kind, shared by fine-tuning,
embedding and evaluation: image files, folders and globs (images.py), manifests (manifest.py) and WebDataset
tar shards (shards.py); `read_pairs` (pairs.py) picks the reader from the argument.
"""

from .images import IMAGE_EXTENSIONS, ImageLoadError, list_images, load_image
from .manifest import MANIFEST_SUFFIXES, read_manifest
from .pairs import load_pair_image, read_pairs
from .samples import Pair, PairList, TarMember
from .shards import SHARD_IMAGE_SUFFIXES, expand_shards, read_shards

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_SUFFIXES",
    "SHARD_IMAGE_SUFFIXES",
    "ImageLoadError",
    "Pair",
    "PairList",
    "TarMember",
    "expand_shards",
    "list_images",
    "load_image",
    "load_pair_image",
    "read_manifest",
    "read_pairs",
    "read_shards",
]
