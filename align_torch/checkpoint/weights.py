"""Reading and writing checkpoints: the native format (config.json + model.safetensors with our names) and
the Hugging Face layout (config.json + model.safetensors / pytorch_model.bin / sharded), converted through
hf_keys. Loading is strict and loud: nothing is ever left silently at random init."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..model.config import AlignConfig
from ..util.class_record import check_record, class_record, is_stock
from ..util.fileio import atomic_dir, check_destination, check_readable
from .config_files import read_json_object
from .hf_keys import config_from_hf, config_to_hf, hf_to_native, native_to_hf

NATIVE_FORMAT = "align_torch"
NATIVE_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Files that travel with a model folder so the processor loads from the same place.
PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",  # transformers 5's layout: the image processor settings nested in it
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "tokenizer.json",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked: unreadable, incomplete, or not matching the config."""


@dataclass
class LoadReport:
    """What did not load. Empty lists mean every model tensor came from the checkpoint."""

    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint (..) vs model (..)", shape or dtype kind

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = []
        for what, keys in (
            ("missing from the checkpoint", self.missing),
            ("unexpected in the checkpoint", self.unexpected),
            ("with the wrong shape or dtype", self.mismatched),
        ):
            if keys:
                shown = "; ".join(keys[:10]) + (f"; ... ({len(keys) - 10} more)" if len(keys) > 10 else "")
                parts.append(f"{len(keys)} keys {what}: {shown}")
        return "\n".join(parts) or "all keys matched"


# --- reading tensors ----------------------------------------------------------------------------------
def read_tensor_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """One `.safetensors` or `.bin` file -> {name: tensor} on the CPU. `.bin` is unpickled with
    `weights_only=True` only: a pickle holding anything but tensors is refused."""
    path = check_readable(path, "weights file", CheckpointError)
    if path.suffix == ".safetensors":
        try:
            sd = load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"could not read {str(path)!r} (truncated or not a safetensors file): {e}") from e
    elif path.suffix in (".bin", ".pt", ".pth"):
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"refusing to load {str(path)!r}: it holds objects other than tensors, and .bin checkpoints are "
                f"only read with torch.load(weights_only=True). Details: {str(e).splitlines()[0]}"
            ) from e
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise CheckpointError(f"could not read {str(path)!r} (truncated or corrupt): {e}") from e
    else:
        raise CheckpointError(f"unknown weights format {path.suffix!r} for {str(path)!r}")
    if not isinstance(sd, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise CheckpointError(f"{str(path)!r} is not a state dict (a mapping of names to tensors)")
    return sd


def read_hf_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of an HF-layout folder: safetensors first, then `.bin`, single file or sharded."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (folder / single).is_file():
            return read_tensor_file(folder / single)
        if (folder / index).is_file():
            return _read_sharded(folder, folder / index)
    raise CheckpointError(
        f"no weights in {str(folder)!r}: expected model.safetensors, pytorch_model.bin or a sharded *.index.json"
    )


def _read_sharded(folder: Path, index_path: Path) -> dict[str, torch.Tensor]:
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{str(index_path)!r}: field 'weight_map' must be a non-empty object of key -> shard")
    for key, shard in weight_map.items():
        # A shard is a file beside the index: no folders, so an index cannot point outside the checkpoint.
        if not isinstance(shard, str) or not shard or Path(shard).name != shard or shard in (".", ".."):
            raise CheckpointError(
                f"{str(index_path)!r}: field 'weight_map' maps {key!r} to {shard!r}; expected a file name in the folder"
            )
    sd: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        sd.update(read_tensor_file(folder / shard))
    absent = sorted(set(weight_map) - set(sd))
    if absent:
        raise CheckpointError(f"shard index lists {len(absent)} keys that no shard holds: {absent[:10]}")
    return sd


def _read_json(path: Path) -> dict:
    try:
        return read_json_object(path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def is_native(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and _read_json(folder / CONFIG_FILE).get("format") == NATIVE_FORMAT


def read_config(folder: str | os.PathLike) -> AlignConfig:
    """The AlignConfig of a local native or HF-layout folder, without reading its weights."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"{str(folder)!r} has no {CONFIG_FILE}; it is not a model folder")
    raw = _read_json(folder / CONFIG_FILE)
    if raw.get("format") == NATIVE_FORMAT:
        if raw.get("version") != NATIVE_VERSION:
            raise CheckpointError(
                f"{str(folder / CONFIG_FILE)!r}: field 'version' is {raw.get('version')!r}; this align_torch reads "
                f"version {NATIVE_VERSION} (a newer align_torch wrote it, or the file was edited)"
            )
        try:
            return AlignConfig.from_dict(raw["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"bad native config in {str(folder / CONFIG_FILE)!r}: {e}") from e
    try:
        return config_from_hf(raw)
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"bad Hugging Face config in {str(folder / CONFIG_FILE)!r}: {e}") from e


def recorded_model_class(folder: str | os.PathLike) -> dict | None:
    """The model class a local model folder's config.json records (see write_native); None when it records none."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return check_record(_read_json(path).get("model_class"), repr(str(path)))
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def read_checkpoint(folder: str | os.PathLike) -> tuple[AlignConfig, dict[str, torch.Tensor]]:
    """A local native or HF-layout folder -> (config, native state dict)."""
    folder = Path(folder)
    config = read_config(folder)
    if is_native(folder):
        return config, read_tensor_file(folder / WEIGHTS_FILE)
    try:
        return config, hf_to_native(read_hf_state_dict(folder))
    except KeyError as e:
        raise CheckpointError(f"{str(folder)!r}: {e}") from e


# --- into a model -------------------------------------------------------------------------------------
def _dtype_kind(t: torch.Tensor) -> str:
    return "floating" if t.is_floating_point() else "complex" if t.is_complex() else "integer"


def compare_state_dicts(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> LoadReport:
    """What in `sd` does not fit a model whose state dict is `own` (shapes and dtype kinds; values are not read).

    A tensor of another floating dtype loads (float16 weights into a float32 model are converted), but an integer
    tensor for a floating parameter (int8-quantised weights, whose scales live elsewhere) or the reverse is
    refused: copying it would turn its raw codes into numbers that are not the weights."""
    mismatched = []
    for k in sorted(set(own) & set(sd)):
        if sd[k].shape != own[k].shape:
            mismatched.append(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}")
        elif _dtype_kind(sd[k]) != _dtype_kind(own[k]):
            mismatched.append(
                f"{k}: checkpoint {str(sd[k].dtype).removeprefix('torch.')} vs model "
                f"{str(own[k].dtype).removeprefix('torch.')} ({_dtype_kind(sd[k])} values cannot stand for "
                f"{_dtype_kind(own[k])} ones; a quantised checkpoint must be dequantised first)"
            )
    return LoadReport(missing=sorted(set(own) - set(sd)), unexpected=sorted(set(sd) - set(own)), mismatched=mismatched)


def load_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], strict: bool = True) -> LoadReport:
    """Copy `sd` into `model`. Strict: any missing, unexpected or mis-shaped key raises, naming them.
    Non-strict: loads what matches and returns the rest in a LoadReport."""
    own = model.state_dict()
    report = compare_state_dicts(own, sd)
    if strict and not report.ok:
        raise CheckpointError(f"checkpoint does not match the model's config:\n{report}")
    bad = {m.split(":")[0] for m in report.mismatched}
    with torch.no_grad():
        for k, v in sd.items():
            if k in own and k not in bad:
                own[k].copy_(v)
    return report


# --- writing ------------------------------------------------------------------------------------------
WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def is_checkpoint_dir(folder: str | os.PathLike) -> bool:
    """Whether `folder` is itself a model checkpoint (native or HF layout): config.json and weights, and only
    files (no subfolders), so that replacing it replaces nothing but a checkpoint."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    entries = list(folder.iterdir())
    return (
        (folder / CONFIG_FILE).is_file()
        and any((folder / name).is_file() for name in WEIGHTS_FILES)
        and all(e.is_file() and not e.is_symlink() for e in entries)
    )


def check_checkpoint_destination(
    folder: str | os.PathLike, overwrite: bool = False, protect: tuple[str | os.PathLike, ...] = ()
) -> None:
    """Raise unless a checkpoint may be written at `folder`: absent or empty, or (with `overwrite`) a
    checkpoint folder that holds neither the working directory nor any `protect` path."""
    check_destination(folder, overwrite=overwrite, replaceable=is_checkpoint_dir, what="checkpoint", protect=protect)


def checkpoint_dir(
    folder: str | os.PathLike, overwrite: bool = False, protect: tuple[str | os.PathLike, ...] = ()
) -> contextlib.AbstractContextManager[Path]:
    """`atomic_dir` for a checkpoint folder: with `overwrite`, only an existing checkpoint is replaced."""
    return atomic_dir(folder, overwrite=overwrite, replaceable=is_checkpoint_dir, what="checkpoint", protect=protect)


def _copy_processor_files(src: Path | None, dst: Path) -> None:
    if src is None:
        return
    for name in PROCESSOR_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def write_native(model: torch.nn.Module, folder: Path, model_class: type | None = None) -> None:
    """config.json + model.safetensors (native names) into an existing folder, e.g. one from `checkpoint_dir`.
    config.json records the model's class (or `model_class`) when it is a user's subclass (util/class_record.py)."""
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config = {"format": NATIVE_FORMAT, "version": NATIVE_VERSION, "config": model.config.to_dict()}
    record = class_record(model_class or type(model))
    if not is_stock(record):  # a stock folder records nothing, so any class may load it
        config["model_class"] = record
    save_file(sd, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def save_native(
    model: torch.nn.Module,
    folder: str | os.PathLike,
    processor_from: Path | None = None,
    overwrite: bool = False,
    protect: tuple[str | os.PathLike, ...] = (),
) -> None:
    """Write config.json + model.safetensors (native names) atomically; copy processor files if given.
    An existing non-empty `folder` is replaced only with `overwrite`, and only if it is a checkpoint."""
    with checkpoint_dir(folder, overwrite=overwrite, protect=protect) as tmp:
        write_native(model, tmp)
        _copy_processor_files(processor_from, tmp)


def save_hf(
    config: AlignConfig,
    sd: dict[str, torch.Tensor],
    folder: str | os.PathLike,
    processor_from: Path | None = None,
    overwrite: bool = False,
    protect: tuple[str | os.PathLike, ...] = (),
) -> None:
    """Write an HF-layout folder (config.json + model.safetensors) that transformers' AlignModel loads; the same
    rules as `save_native` for an existing `folder`."""
    hf_config = config_to_hf(config)  # first: it names what transformers' ALIGN cannot hold (a sigmoid loss's bias)
    hf_sd = native_to_hf(sd, max_positions=config.text.max_position_embeddings)
    hf_sd = {k: v.detach().contiguous().cpu() for k, v in hf_sd.items()}
    with checkpoint_dir(folder, overwrite=overwrite, protect=protect) as tmp:
        save_file(hf_sd, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
        _copy_processor_files(processor_from, tmp)
