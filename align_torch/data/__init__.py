"""Where images and image-caption pairs come from, one reader per input kind, shared by fine-tuning,
embedding and evaluation: image files, folders and globs (images.py), manifests (manifest.py), WebDataset
tar shards (shards.py), Parquet with the images inside (parquet.py) and Python sequences of mappings such as a
`datasets.Dataset` (rows.py); `read_pairs` (pairs.py) picks the reader from the argument.
"""

from .images import IMAGE_EXTENSIONS, ImageLoadError, list_images, load_image
from .manifest import MANIFEST_SUFFIXES, read_manifest
from .pairs import is_parquet, load_pair_image, read_pairs
from .parquet import Selection, expand_parquet, read_parquet
from .rows import is_rows, read_rows
from .samples import ImageRef, MemoryImage, Pair, PairList, ParquetImage, TarMember
from .shards import SHARD_IMAGE_SUFFIXES, expand_shards, read_shards

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_SUFFIXES",
    "SHARD_IMAGE_SUFFIXES",
    "ImageLoadError",
    "ImageRef",
    "MemoryImage",
    "Pair",
    "PairList",
    "ParquetImage",
    "Selection",
    "TarMember",
    "expand_parquet",
    "expand_shards",
    "is_parquet",
    "is_rows",
    "list_images",
    "load_image",
    "load_pair_image",
    "read_manifest",
    "read_pairs",
    "read_parquet",
    "read_rows",
    "read_shards",
]
