"""Writing the embeddings folder (layout.py): embeddings.json once, then each partition's files atomically,
the completion marker last, so a partition is either finished (marker present) or redone by the next run."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..util.fileio import atomic_file, create_file
from .layout import INFO_FILE, EmbeddingsFolderError, FolderInfo, partition_files


def prepare_folder(folder: str | os.PathLike, info: FolderInfo) -> Path:
    """Create `folder` with embeddings.json, or check that an existing one was made with the same model and
    arguments; a folder that is neither empty nor ours is refused, never written into."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise EmbeddingsFolderError(f"--out {str(folder)!r} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / INFO_FILE).is_file():
        # Another rank may be writing embeddings.json right now: its temporary file is not a stranger.
        strangers = [p.name for p in folder.iterdir() if not p.name.startswith(f".{INFO_FILE}.")]
        if strangers and not (folder / INFO_FILE).is_file():
            raise EmbeddingsFolderError(
                f"--out {str(folder)!r} is not empty and is not an embeddings folder (it holds {sorted(strangers)[:3]}); "
                "give a new or empty folder"
            )
        # The claim: whichever run creates embeddings.json first owns the folder; a run that loses the race reads
        # the winner's description below and goes on only if it is the same (another rank of the same job).
        claim = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        claimed = replace(info, created_with={**info.created_with, "claimed_by": claim})
        create_file(folder / INFO_FILE, claimed.to_json().encode("utf-8"))
    existing = FolderInfo.load(folder)
    if existing.model_class is None:  # written before classes were recorded: the class cannot be compared
        info = replace(info, model_class=None)
    if existing.identity() != info.identity():
        ours, theirs = info.identity(), existing.identity()
        changed = [k for k in ours if ours[k] != theirs.get(k)]
        detail = "; ".join(f"{k}: folder has {theirs.get(k)!r}, this run {ours[k]!r}" for k in changed[:4])
        if "model_fingerprint" in changed and not str(theirs["model_fingerprint"]).startswith("sha256:"):
            detail += (
                " (the folder's fingerprint is an earlier align_torch's, which read only part of each weight file)"
            )
        holder = existing.created_with.get("claimed_by")
        by = ""
        if isinstance(holder, dict):
            by = f" by pid {holder.get('pid')} on {holder.get('host')} at {holder.get('at')}"
        raise EmbeddingsFolderError(
            f"{str(folder)!r} was claimed{by} for a different model or arguments ({detail}); "
            "rerun with the same ones to finish it, or write to another --out"
        )
    return folder


TEXT_COLUMNS = ("image_path", "caption", "key", "url")


def _metadata_column(name: str, values: list):
    """Our columns are text (also when a partition is empty); an input's own columns (Parquet ids, sizes) keep
    their kind."""
    import pyarrow as pa

    text = name in TEXT_COLUMNS and all(v is None or isinstance(v, str) for v in values)
    return pa.array(values, type=pa.string() if text else None)


@dataclass
class PartitionResult:
    """One embedded partition, ready to write. Rows of the arrays and of `metadata` correspond."""

    index: int
    image_embeddings: np.ndarray  # (rows, dim), the folder's dtype
    metadata: dict[str, list]  # column -> values, `image_path` first
    text_embeddings: np.ndarray | None = None  # (rows, dim)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"image_path", "error"}
    seconds: float = 0.0
    rank: int = 0


def write_partition(folder: str | os.PathLike, info: FolderInfo, result: PartitionResult) -> None:
    """Write the partition's npy and parquet files atomically, then its completion marker."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = partition_files(folder, result.index, info)
    rows = len(result.image_embeddings)
    if any(len(v) != rows for v in result.metadata.values()):
        raise ValueError(f"partition {result.index}: metadata columns do not have {rows} rows")
    arrays = {"img_emb": result.image_embeddings}
    if info.captions:
        if result.text_embeddings is None or len(result.text_embeddings) != rows:
            raise ValueError(f"partition {result.index}: the folder has captions but no text embeddings per row")
        arrays["text_emb"] = result.text_embeddings
    for name, array in arrays.items():
        if array.dtype != np.dtype(info.dtype) or array.ndim != 2 or array.shape[1] != info.dim:
            raise ValueError(
                f"partition {result.index}: {name} is {array.dtype} {array.shape}, expected (rows, {info.dim}) {info.dtype}"
            )
        with atomic_file(files[name]) as tmp, open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
    table = pa.table({k: _metadata_column(k, v) for k, v in result.metadata.items()})
    with atomic_file(files["metadata"]) as tmp:
        pq.write_table(table, tmp)
    marker = {
        "partition": result.index,
        "rows": rows,
        "skipped": result.skipped,
        "seconds": round(result.seconds, 3),
        "rank": result.rank,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with atomic_file(files["done"]) as tmp:
        tmp.write_text(json.dumps(marker, ensure_ascii=False) + "\n", encoding="utf-8")
