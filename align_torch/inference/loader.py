"""The one loader every command uses: device -> processor -> model (of the user's class) -> fast path.

`load_for_inference("kakaobrain/align-base", model_class="my_pkg.variants:PreLNAlign")` builds the user's
AlignModel subclass from the checkpoint's config and weights (`Class.from_pretrained`), so every command runs
the variant a researcher wrote; `fuse_for_inference` then checks that fusing leaves its answers unchanged.

A model reference is resolved once (`resolve_model`: a folder as is, a Hub id downloaded with its weights in
one snapshot call) and that folder is handed to the processor, the model and whatever records the model.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..checkpoint.hub import ModelSource, resolve_model
from ..checkpoint.weights import read_config, recorded_model_class
from ..model.align import AlignModel
from ..model.config import AlignConfig
from ..preprocess.processor import AlignProcessor
from ..util.device import resolve_device
from ..util.renamed import renamed_keywords
from .backend import BACKENDS, use_backend
from .fast import fuse_for_inference
from .model_class import follow_model_class, import_model_class, print_note


@renamed_keywords(model="source")
def load_model(
    source: str | os.PathLike | ModelSource,
    device: str | torch.device = "auto",
    *,
    model_class: type[AlignModel] | str | None = None,
) -> AlignModel:
    """The weights of the model `source` names (a folder, a Hub repo id or a resolved ModelSource) in
    `model_class` (default: the class the model folder records, else AlignModel; 'module:Class' is imported), eval
    mode. A class other than the recorded one is refused, naming both."""
    source = resolve_model(source)
    recorded = recorded_model_class(source.folder)
    if recorded is not None and model_class is None and not Path(source.reference).is_dir():
        raise ValueError(
            f"model {source.reference!r} records the model class {recorded['class']}; a class named by a downloaded "
            f"file is not imported on its own: give --model-class {recorded['class']} to build it"
        )
    cls = follow_model_class(model_class, recorded, f"model {source.reference!r}", print_note) or AlignModel
    where = device if isinstance(device, torch.device) else resolve_device(device)
    loaded = cls.from_pretrained(source.folder, device=where)
    check_finite_weights(loaded, source)
    return loaded


def check_finite_weights(model: AlignModel, source: str | os.PathLike | ModelSource) -> None:
    """Refuse a model whose weights or buffers hold NaN or infinity, naming the first such tensor: every
    output it wrote (embeddings, scores, an exported graph's parity) would be NaN."""
    where = source.reference if isinstance(source, ModelSource) else source
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{where}: weight {name} holds {bad} NaN or infinite values of {tensor.numel()}")


@renamed_keywords(model="source")
def load_config(source: str | os.PathLike | ModelSource) -> AlignConfig:
    """The config of the model `source` names, alone: a Hub id fetches configs and vocab, never weights."""
    return read_config(resolve_model(source, weights=False).folder)


@renamed_keywords(model="source")
def load_for_inference(
    source: str | os.PathLike | ModelSource,
    device: str | torch.device = "auto",
    *,
    fuse: bool = True,
    model_class: type[AlignModel] | str | None = None,
    backend: str = "torch",
) -> tuple[AlignModel, AlignProcessor]:
    """(model, processor) from `source`, one folder or Hub repo id (or a resolved ModelSource): the model in eval mode on `device` ("auto", "cpu",
    ... or a torch.device), of `model_class`, through `fuse_for_inference` unless `fuse` is False, its towers
    on `backend` ("torch", "onnxruntime" or "auto": inference.backend.use_backend)."""
    if isinstance(model_class, str):
        model_class = import_model_class(model_class)  # a wrong name fails before anything loads
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    source = resolve_model(source)
    processor = AlignProcessor.from_pretrained(source.folder)
    loaded = load_model(source, device, model_class=model_class)
    loaded = fuse_for_inference(loaded) if fuse else loaded.eval()
    return use_backend(loaded, backend), processor
