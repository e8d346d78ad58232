"""Checkpoint conversion between the native and Hugging Face layouts, checked against the model it describes."""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint.hub import resolve_model_dir
from ..checkpoint.weights import check_checkpoint_destination, load_state_dict, read_checkpoint, save_hf, save_native
from ..model.align import AlignModel


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str = "native", overwrite: bool = False) -> Path:
    """Convert a checkpoint folder (native or HF layout, or a Hub id) to `to` ("native" or "hf") at `dst`.

    `dst` must be absent or empty unless `overwrite`, which replaces only a checkpoint folder that holds
    neither the source nor the working directory. The state dict is checked against its config before
    anything is written."""
    if to not in ("native", "hf"):
        raise ValueError(f"convert: to must be 'native' or 'hf', got {to!r}")
    local = (src,) if os.path.exists(src) else ()
    check_checkpoint_destination(dst, overwrite=overwrite, protect=local)  # before any download
    folder = resolve_model_dir(src)
    if os.path.realpath(dst) == os.path.realpath(folder):
        raise ValueError("convert: destination is the source folder; choose another")
    check_checkpoint_destination(dst, overwrite=overwrite, protect=(folder,))
    config, sd = read_checkpoint(folder)
    model = AlignModel(config)
    load_state_dict(model, sd, strict=True)
    if to == "native":
        save_native(model, dst, processor_from=folder, overwrite=overwrite, protect=(folder,))
    else:
        save_hf(config, model.state_dict(), dst, processor_from=folder, overwrite=overwrite, protect=(folder,))
    return Path(dst)
