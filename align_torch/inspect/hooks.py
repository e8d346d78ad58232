"""Read and change what flows through a model, by name, with plain PyTorch forward hooks.

A site is a `model.named_modules()` path, e.g. `vision_model.stem`, `vision_model.blocks.10`,
`vision_model.blocks.10.se` (the gated map), `vision_model` (the pooled image embedding), `text_model.embeddings`,
`text_model.layers.3`, `text_model.layers.3.mlp`, `text_projection` (the projected text embedding); its value is
the module's output (for a module returning a tuple, e.g. a BERT layer's (hidden, probs), the first element). Two suffixes name values inside a text attention module:
`text_model.layers.3.attn:probs` (softmax probabilities, (B, heads, T, T)) and `...attn:heads` (per-head
outputs, (B, heads, T, head_dim), before they are merged and projected). While a `:probs` site is hooked, the
attention runs its eager path (SDPA computes no probabilities).

Every hook is removed when its `with` block ends, also on an exception; a model with none installed runs as
before. Hooks see only the modules that run: a fused model's packed text path (`fuse_for_inference`) runs the
layers' weights without calling the layer modules, so text sites of a fused model are reported as not run.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..model.efficientnet import VisionOutput

SUFFIXES = {"probs": "probs_site", "heads": "heads_site"}  # site suffix -> the attention's parameter-free module


def resolve_site(model: nn.Module, site: str) -> tuple[nn.Module, nn.Module | None]:
    """A site name -> (the module whose output is the value, the attention module to force eager or None)."""
    if not isinstance(site, str):
        raise TypeError(f"a site is a module path string such as 'vision_model.blocks.10', got {site!r}")
    path, _, suffix = site.partition(":")
    modules = dict(model.named_modules())
    if path not in modules or path == "":
        raise ValueError(
            f"unknown site {site!r}: no module {path!r} in the model (a site is a named_modules() path, e.g. "
            "'vision_model.blocks.10' or 'text_model.layers.3.mlp')"
        )
    module = modules[path]
    if not suffix:
        return module, None
    if suffix not in SUFFIXES:
        raise ValueError(f"unknown site suffix {suffix!r} in {site!r}; choose from {sorted(SUFFIXES)}")
    if not hasattr(module, SUFFIXES[suffix]):
        raise ValueError(
            f"site {site!r}: :{suffix} names a value inside a text attention module (e.g. 'text_model.layers.3.attn')"
        )
    return getattr(module, SUFFIXES[suffix]), module if suffix == "probs" else None


def _first(out: Any) -> torch.Tensor:
    """A module's value at its site: the first element of a tuple, the pooled embedding of the image tower's
    output (the `vision_model` site)."""
    if isinstance(out, VisionOutput):
        return out.pooler_output
    return out[0] if isinstance(out, tuple) else out


def _force_eager(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook on an attention module: ask for the probabilities, so the eager path (and its
    `probs_site`) runs."""
    if len(args) >= 3:
        return (*args[:2], True, *args[3:]), kwargs
    return args, {**kwargs, "need_weights": True}


@contextlib.contextmanager
def _hooked(model: nn.Module, hooks: Mapping[str, Callable[[nn.Module, tuple, Any], Any]]) -> Iterator[None]:
    """Install one forward hook per site (plus the eager switch where needed); remove them all on exit."""
    resolved = {site: resolve_site(model, site) for site in hooks}  # every name checked before any hook goes in
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for site, (module, attention) in resolved.items():
            if attention is not None:
                handles.append(attention.register_forward_pre_hook(_force_eager, with_kwargs=True))
            handles.append(module.register_forward_hook(hooks[site]))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def eval_then_restore(model: nn.Module) -> Iterator[None]:
    """Run in eval mode, then give each module back its own mode (a BatchNorm frozen in a training model stays
    frozen): batch statistics would make one image's value depend on the others in its batch."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.train(training)


class SiteCache(dict):
    """site -> the value seen at the last forward pass (a KeyError names a site that did not run)."""

    def __missing__(self, site: str) -> torch.Tensor:
        raise KeyError(
            f"site {site!r} did not run in this block (not captured, or skipped: e.g. a fused model's packed "
            "text path calls no layer modules)"
        )


@contextlib.contextmanager
def capture(model: nn.Module, sites: Iterable[str], detach: bool = True) -> Iterator[SiteCache]:
    """`with capture(model, ["vision_model.blocks.10"]) as cache: model(...)`, then `cache[site]` is the value
    at that site in the last forward pass (detached unless `detach=False`, to differentiate through it)."""
    cache = SiteCache()

    def store(site: str) -> Callable[[nn.Module, tuple, Any], None]:
        def hook(_m: nn.Module, _args: tuple, out: Any) -> None:
            value = _first(out)
            cache[site] = value.detach() if detach else value

        return hook

    with _hooked(model, {site: store(site) for site in sites}):
        yield cache


@contextlib.contextmanager
def patch(model: nn.Module, fns: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """`with patch(model, {site: fn}): model(...)`: each site's value is replaced by `fn(value)` (for a
    tuple output, its first element; the rest is kept)."""

    def replace(site: str) -> Callable[[nn.Module, tuple, Any], Any]:
        fn = fns[site]

        def hook(_m: nn.Module, _args: tuple, out: Any) -> Any:
            if isinstance(out, tuple):
                return (fn(out[0]), *out[1:])
            if isinstance(out, VisionOutput):
                return dataclasses.replace(out, pooler_output=fn(out.pooler_output))
            return fn(out)

        return hook

    with _hooked(model, {site: replace(site) for site in fns}):
        yield


@contextlib.contextmanager
def ablate_heads(model: nn.Module, heads: Mapping[int, Iterable[int]]) -> Iterator[None]:
    """Zero the outputs of text attention heads, `{layer: [head, ...]}`, inside the `with` block (the output
    projection's bias still flows)."""
    layers = model.text_model.layers
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for layer, which in heads.items():
        if not isinstance(layer, int) or not 0 <= layer < len(layers):
            raise ValueError(f"layer {layer!r} out of range: the text tower has layers 0..{len(layers) - 1}")
        which = sorted(set(which))
        n = layers[layer].attn.num_heads
        if any(not isinstance(h, int) or not 0 <= h < n for h in which):
            raise ValueError(f"layer {layer}: heads {which} out of range 0..{n - 1}")
        fns[f"text_model.layers.{layer}.attn:heads"] = _zero_along(1, which)  # (B, heads, T, hd)
    with patch(model, fns):
        yield


@contextlib.contextmanager
def ablate_channels(model: nn.Module, site: str, channels: Iterable[int]) -> Iterator[None]:
    """Zero `channels` of a site's value inside the `with` block: dimension 1 of a (B, C, h, w) image map,
    the last dimension of a (B, T, D) text state or a (B, D) embedding."""
    channels = sorted(set(channels))

    def zero(value: torch.Tensor) -> torch.Tensor:
        dim = 1 if value.ndim == 4 else value.ndim - 1
        if channels and not (0 <= channels[0] and channels[-1] < value.shape[dim]):
            raise ValueError(f"site {site!r}: channels {channels} out of range 0..{value.shape[dim] - 1}")
        return _zero_along(dim, channels)(value)

    with patch(model, {site: zero}):
        yield


def _zero_along(dim: int, index: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    def zero(value: torch.Tensor) -> torch.Tensor:
        keep = torch.ones(value.shape[dim], dtype=value.dtype, device=value.device)
        keep[index] = 0
        shape = [1] * value.ndim
        shape[dim] = -1
        return value * keep.view(shape)  # not in place: the value may be saved for backward

    return zero


@dataclass
class PatchEffect:
    """Cosines of the target pairs without and with the source's values at the sites, and of the source."""

    clean: torch.Tensor  # (B,) target cosine
    patched: torch.Tensor  # (B,) target cosine with the sites' values taken from the source run
    source: torch.Tensor  # (B,) source cosine

    @property
    def effect(self) -> float:
        """The mean change of the target cosine that patching caused: one number."""
        return float((self.patched - self.clean).mean())

    @property
    def restored(self) -> torch.Tensor:
        """(B,) the fraction of the source-target gap that patching closed (1: the sites carry all of it)."""
        return (self.patched - self.clean) / (self.source - self.clean)


def patch_from(
    model: nn.Module,
    source_inputs: Mapping[str, torch.Tensor],
    sites: Iterable[str],
    *,
    target_inputs: Mapping[str, torch.Tensor],
) -> PatchEffect:
    """Activation patching: run the source inputs and keep the values at `sites`, then run the target inputs
    with those values put in. Inputs are the model's keywords (pixel_values, input_ids, attention_mask, ...);
    source and target must give the sites the same shapes (same image size, same text length)."""
    sites = list(sites)
    with eval_then_restore(model), torch.no_grad():
        with capture(model, sites) as cache:
            source = _cosine(model, source_inputs)
        missing = [s for s in sites if s not in cache]
        if missing:
            raise ValueError(f"sites {missing} did not run on the source inputs")
        with patch(model, {s: _put(s, cache[s]) for s in sites}):
            patched = _cosine(model, target_inputs)
        clean = _cosine(model, target_inputs)
    return PatchEffect(clean=clean, patched=patched, source=source)


def _put(site: str, value: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def put(out: torch.Tensor) -> torch.Tensor:
        if out.shape != value.shape:
            raise ValueError(
                f"site {site!r}: the source gave {tuple(value.shape)} but the target {tuple(out.shape)}; patch "
                "between inputs of the same batch size, image size and text length"
            )
        return value

    return put


def _cosine(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    out = model(**inputs)
    return (out.image_embeds * out.text_embeds).sum(dim=-1).float()  # (B,)
