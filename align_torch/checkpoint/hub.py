"""Turn a model name into a local folder: a path as given, or a Hub repo id downloaded into the HF cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

from ..util.renamed import renamed_keywords

# What a model folder may need: configs, vocab, and one weight format. Safetensors first; the `.bin`
# is fetched only when the repo has no safetensors (kakaobrain/align-base ships only the `.bin`).
METADATA_PATTERNS = ["*.json", "*.txt"]
SAFETENSORS_PATTERNS = ["*.safetensors", "*.safetensors.index.json"]
BIN_PATTERNS = ["*.bin", "*.bin.index.json"]


class HubError(OSError):
    """A repo id could not be resolved to a local folder (offline, unknown repo, network failure)."""


def _is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _download(repo_id: str, patterns: list[str], revision: str | None, cache_dir: str | None) -> Path:
    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                allow_patterns=patterns,
                local_files_only=_is_offline(),
            )
        )
    except LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE is set" if _is_offline() else "the Hugging Face Hub could not be reached"
        raise HubError(
            f"{repo_id!r} is not a local folder, {why}, and it is not in the local Hugging Face cache. "
            "Download it once while online, or pass the path of a local copy."
        ) from e
    except RepositoryNotFoundError as e:
        raise HubError(f"{repo_id!r} is neither a local folder nor a repository on the Hugging Face Hub") from e
    except HfHubHTTPError as e:
        raise HubError(f"downloading {repo_id!r} from the Hugging Face Hub failed: {e}") from e


def resolve_model_dir(
    name_or_path: str | os.PathLike,
    *,
    weights: bool = True,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> Path:
    """Return a local folder for `name_or_path`: the folder itself, or a Hub snapshot in the HF cache.

    With `weights=False` only configs and vocab are fetched (what a processor needs).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{str(path)!r} is a file; expected a model folder or a Hub repo id")
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model folder {name!r} does not exist")
    if not weights:
        return _download(name, METADATA_PATTERNS, revision, cache_dir)
    # Metadata and safetensors in one call; a second only for a repo that ships `.bin` weights alone.
    folder = _download(name, METADATA_PATTERNS + SAFETENSORS_PATTERNS, revision, cache_dir)
    if not any(folder.glob("*.safetensors")):
        folder = _download(name, METADATA_PATTERNS + BIN_PATTERNS, revision, cache_dir)
    return folder


@dataclass(frozen=True)
class ModelSource:
    """A model reference resolved once per command: the local folder every reader is handed, and what
    outputs record as the model (see model_reference)."""

    folder: Path
    reference: str


@renamed_keywords(model="source")
def resolve_model(
    source: str | os.PathLike | ModelSource,
    *,
    weights: bool = True,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> ModelSource:
    """`source` (a folder, a Hub repo id, or an already resolved ModelSource, returned as is) -> ModelSource.
    With `weights=False` only configs and vocab are fetched."""
    if isinstance(source, ModelSource):
        return source
    folder = resolve_model_dir(source, weights=weights, revision=revision, cache_dir=cache_dir)
    return ModelSource(folder=folder, reference=model_reference(source))


def model_reference(name_or_path: str | os.PathLike) -> str:
    """What to record as "the model" in an output: an existing folder as its absolute path (a relative path
    would mean another folder when the output is read from elsewhere), anything else as the Hub repo id."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_dir() else str(name_or_path)
