"""The embeddings folder written by `align-torch embed INPUT --out DIR`: clip-retrieval's `inference` layout,
so embedding-reader, autofaiss and clip-retrieval's `index`/`back` read it unchanged.

    DIR/
      embeddings.json                  what made the folder (see FolderInfo); written first, never changed
      img_emb/img_emb_{N}.npy          (rows, dim) float16 (or float32 with --dtype float32), rows L2-normalised
      text_emb/text_emb_{N}.npy        (rows, dim) likewise, row i = the caption of image row i; only when the
                                       input has captions (manifest `caption` column, shard .txt files,
                                       a Parquet caption column: a row's first caption)
      metadata/metadata_{N}.parquet    one row per embedding row, in the same order: `image_path`, and
                                       `caption` when there are captions, `key` and `url` for WebDataset shards,
                                       the input's other scalar columns for Parquet and Python rows
      done/done_{N}.json               completion marker, written after the three files above: rows, the
                                       unreadable inputs left out (`skipped`: [{"image_path", "error"}]),
                                       seconds, the rank that wrote it

N is the partition number zero-padded to the digits of the partition count (clip-retrieval's rule), so a
name sort is the partition order. Partition N holds items [N * size, (N + 1) * size) of the input listing
(folders, globs, file lists, manifests, rows; `size` = --partition-size), the samples of shard N (WebDataset
input, one partition per shard), or for Parquet consecutive row groups of up to `size` rows (a larger row group
alone). A partition is finished when its marker exists; readers should only read
finished partitions (the three files of an unfinished one may be missing or from an interrupted run). A
partition whose images all failed has 0-row files, so numbering stays dense.

`image_path` is the file path as text (absolute for folder and manifest input), `SHARD.tar:MEMBER` for
shard input, `SHARD.parquet:ROW` (the row in its file, from 0) for Parquet with images inside, `row ROW` for
Python rows holding images, through `fileio.path_to_text`: a UTF-8 name as it is, any other as "file:" and its percent-encoded
bytes (Parquet strings are UTF-8); `fileio.text_to_path` gives back the exact bytes.

Reading it with numpy and pandas alone:

    vectors = np.concatenate([np.load(f) for f in sorted(glob("DIR/img_emb/*.npy"))])
    meta = pd.concat([pd.read_parquet(f) for f in sorted(glob("DIR/metadata/*.parquet"))], ignore_index=True)

`np.load(f, mmap_mode="r")` reads a partition without loading it into memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..util.class_record import check_record

FORMAT = "align_torch.embeddings_folder"
VERSION = 1
INFO_FILE = "embeddings.json"
IMG_DIR, TEXT_DIR, META_DIR, DONE_DIR = "img_emb", "text_emb", "metadata", "done"
DTYPES = ("float16", "float32")


class EmbeddingsFolderError(ValueError):
    """A folder that is not (or not compatibly) an align_torch embeddings folder; says what is wrong."""


@dataclass(frozen=True)
class FolderInfo:
    """embeddings.json: what defines the folder's contents. Two runs may write into one folder only when
    their FolderInfo is equal (`identity` is compared; `created_with` is informational)."""

    model: str  # resolved model folder (absolute) or Hugging Face Hub repo id
    model_fingerprint: str  # "sha256:" + hash of the names, sizes and bytes of the model's weights and config
    fused: bool  # fuse_for_inference (equal to about 1e-5, not bit-equal)
    compute: str  # inference.embed.compute_mode: "bf16-autocast" (float32 on CUDA) or the dtype; then any ONNX backend
    dim: int
    dtype: str  # "float16" or "float32"
    captions: bool  # text_emb/ is written
    input_kind: str  # "images", "manifest", "shards", "parquet" or "rows"
    inputs: list[str]  # the INPUT arguments, resolved
    input_items: int  # images listed (files, manifest rows) or shards
    input_fingerprint: str  # sha256 of the listing, so a grown folder is noticed
    partition_unit: str  # "images" (partition_size images each), "shard" (one shard each) or "row groups"
    partition_size: int | None
    partitions: int
    # util/class_record.py: {"class": "module:Class", "source": "sha256:..."}; None in folders written before
    # classes were recorded
    model_class: dict | None = None
    format: str = FORMAT
    version: int = VERSION
    created_with: dict = field(default_factory=dict, compare=False)

    @property
    def width(self) -> int:
        """Digits of a partition number in file names (clip-retrieval's rule: the digits of the count)."""
        return len(str(self.partitions))

    def identity(self) -> dict:
        info = asdict(self)
        info.pop("created_with")
        return info

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def load(cls, folder: str | os.PathLike) -> FolderInfo:
        """Read DIR/embeddings.json; EmbeddingsFolderError when it is missing or not ours."""
        path = Path(folder) / INFO_FILE
        if not path.is_file():
            raise EmbeddingsFolderError(f"{str(folder)!r} is not an align_torch embeddings folder (no {INFO_FILE})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise EmbeddingsFolderError(f"{str(path)!r} is not an align_torch embeddings folder description")
            if data.get("version") != VERSION:
                raise EmbeddingsFolderError(
                    f"{str(path)!r} has folder format version {data.get('version')!r}; this align_torch reads {VERSION}"
                )
            info = cls(**data)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as e:
            raise EmbeddingsFolderError(f"{str(path)!r} is damaged: {e}") from None
        info.check(path)
        return info

    def check(self, path: str | os.PathLike) -> None:
        """Every field is of its kind and in its range (the counts decide which files are read and how many)."""

        def bad(name: str, what: str) -> EmbeddingsFolderError:
            return EmbeddingsFolderError(
                f"{str(path)!r} is damaged: {name} must be {what}, got {getattr(self, name)!r}"
            )

        for name in ("model", "model_fingerprint", "compute", "input_kind", "input_fingerprint", "partition_unit"):
            if not isinstance(getattr(self, name), str):
                raise bad(name, "text")
        for name in ("fused", "captions"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        for name, least in (("dim", 1), ("input_items", 0), ("partitions", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise bad(name, f"an integer of at least {least}")
        size = self.partition_size
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise bad("partition_size", "null or an integer of at least 1")
        if self.dtype not in DTYPES:
            raise bad("dtype", f"one of {DTYPES}")
        if not isinstance(self.inputs, list) or not all(isinstance(i, str) for i in self.inputs):
            raise bad("inputs", "a list of paths")
        if not isinstance(self.created_with, dict):
            raise bad("created_with", "an object")
        try:
            check_record(self.model_class, repr(str(path)))
        except ValueError as e:
            raise EmbeddingsFolderError(f"{str(path)!r} is damaged: {e}") from None


def partition_name(index: int, info: FolderInfo) -> str:
    """'7' -> '007' for a folder of 100..999 partitions."""
    return str(index).zfill(info.width)


def partition_files(folder: str | os.PathLike, index: int, info: FolderInfo) -> dict[str, Path]:
    """The four files of partition `index`: img_emb, text_emb (when captions), metadata, done."""
    folder, n = Path(folder), partition_name(index, info)
    files = {
        "img_emb": folder / IMG_DIR / f"img_emb_{n}.npy",
        "metadata": folder / META_DIR / f"metadata_{n}.parquet",
        "done": folder / DONE_DIR / f"done_{n}.json",
    }
    if info.captions:
        files["text_emb"] = folder / TEXT_DIR / f"text_emb_{n}.npy"
    return files


def finished_partitions(folder: str | os.PathLike, info: FolderInfo) -> list[int]:
    """Partition numbers whose completion marker exists, in order."""
    return [i for i in range(info.partitions) if partition_files(folder, i, info)["done"].is_file()]
