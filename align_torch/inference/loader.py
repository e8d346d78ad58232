"""The one loader every command uses: device -> processor -> model (of the user's class) -> fast path.

`load_for_inference("kakaobrain/align-base", model_class="my_pkg.variants:PreLNAlign")` builds the user's
AlignModel subclass from the checkpoint's config and weights (`Class.from_pretrained`), so every command runs
the variant a researcher wrote; `fuse_for_inference` then checks that fusing leaves its answers unchanged.

A model reference is resolved once (`resolve_model`: a folder as is, a Hub id downloaded with its weights in
one snapshot call) and that folder is handed to the processor, the model and whatever records the model.
"""

from __future__ import annotations

import importlib
import os

import torch

from ..checkpoint.hub import ModelSource, resolve_model
from ..checkpoint.weights import read_config
from ..model.align import AlignModel
from ..model.config import AlignConfig
from ..preprocess.processor import AlignProcessor
from ..util.device import resolve_device
from .fast import fuse_for_inference


def import_model_class(spec: str) -> type[AlignModel]:
    """'package.module:ClassName' -> that class, which must be AlignModel or a subclass of it."""
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(f"--model-class {spec!r}: expected module:Class, e.g. my_variants:PreLNAlign")
    if module_name.startswith("."):  # relative to what? A command has no package to resolve it against
        raise ValueError(
            f"--model-class {spec!r}: give the module's full name (importable from PYTHONPATH), not a relative one"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--model-class {spec!r}: cannot import {module_name!r} ({err})") from err
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"--model-class {spec!r}: module {module_name!r} has no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, AlignModel)):
        raise ValueError(f"--model-class {spec!r}: {class_name} is not a subclass of align_torch.AlignModel")
    return cls


def load_model(
    model: str | os.PathLike | ModelSource,
    device: str | torch.device = "auto",
    *,
    model_class: type[AlignModel] | str | None = None,
) -> AlignModel:
    """The checkpoint's weights in `model_class` (default AlignModel; 'module:Class' is imported), eval mode."""
    cls = import_model_class(model_class) if isinstance(model_class, str) else (model_class or AlignModel)
    where = device if isinstance(device, torch.device) else resolve_device(device)
    loaded = cls.from_pretrained(resolve_model(model).folder, device=where)
    check_finite_weights(loaded, model)
    return loaded


def check_finite_weights(model: AlignModel, source: str | os.PathLike | ModelSource) -> None:
    """Refuse a model whose weights or buffers hold NaN or infinity, naming the first such tensor: every
    output it wrote (embeddings, scores, an exported graph's parity) would be NaN."""
    where = source.reference if isinstance(source, ModelSource) else source
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{where}: weight {name} holds {bad} NaN or infinite values of {tensor.numel()}")


def load_config(model: str | os.PathLike | ModelSource) -> AlignConfig:
    """The model's config alone: a Hub id fetches configs and vocab, never weights."""
    return read_config(resolve_model(model, weights=False).folder)


def load_for_inference(
    model: str | os.PathLike | ModelSource,
    device: str | torch.device = "auto",
    *,
    fuse: bool = True,
    model_class: type[AlignModel] | str | None = None,
) -> tuple[AlignModel, AlignProcessor]:
    """(model, processor) from one folder or Hub repo id: the model in eval mode on `device` ("auto", "cpu",
    ... or a torch.device), of `model_class`, through `fuse_for_inference` unless `fuse` is False."""
    if isinstance(model_class, str):
        model_class = import_model_class(model_class)  # a wrong name fails before anything loads
    source = resolve_model(model)
    processor = AlignProcessor.from_pretrained(source.folder)
    loaded = load_model(source, device, model_class=model_class)
    return (fuse_for_inference(loaded) if fuse else loaded.eval()), processor
