"""The inference fast path: `fuse_for_inference(model)` turns a loaded AlignModel into an inference-only one.

The model files (model/efficientnet.py, model/bert.py) hold the recipe only. Fusing never copies a layer's
`forward` and never changes a module's class: it swaps modules *under* the recipe, or wraps a module so that
the module's own `forward` still runs, so an edit of the recipe (or a subclass's override) reaches every
command. What it does, and why each step is exact (fp32 outputs agree with the unfused model to float rounding):
- every BatchNorm is folded into the convolution before it (in eval mode BN is a per-channel affine map,
  so `bn(conv(x)) == conv'(x)` with `w' = w * g / sqrt(v + eps)`, `b' = b - m * g / sqrt(v + eps)`): the conv
  becomes a `FusedConv2d` and the BN `nn.Identity`, so every block's `forward`, its hooks and
  `forward_intermediates` still work;
- the SiLU after a folded conv moves into it (`FusedConv2d.act`) and its module becomes `nn.Identity` too. On
  the CPU in fp32 eager mode a FusedConv2d then runs as one oneDNN call (conv + bias + SiLU as a post-op,
  weights reordered once into oneDNN's blocked layout and cached), and the squeeze-excite gate multiplies
  in place (`InPlaceGate` around the block's `se`): two passes over each depthwise map instead of four (conv,
  BatchNorm, SiLU, gate), and none of the large temporary buffers whose allocation (page faults) costs as much
  as the arithmetic on a small CPU. The oneDNN op is private to PyTorch (`torch.ops.mkldnn._convolution_pointwise`,
  checked with torch 2.13.0), so the first fused model of a process compares it with the plain conv + SiLU on
  a few layers and, if they disagree or the op fails, warns once and runs every conv the plain way.
  Elsewhere (CUDA, autocast, torch.compile, inputs that need gradients) it is the plain conv + F.silu;
- the image tower stays NCHW on the CPU: the oneDNN convs return NHWC maps whatever the layout, and
  bench/README.md measures NCHW and channels_last weights as equally fast there within noise. On CUDA the tower
  moves to channels_last, where cuDNN runs depthwise and 1x1 convs faster in NHWC;
- every block is wrapped in `SlicedBatch`: on the CPU, a block whose expanded maps for the whole batch exceed
  `cpu_chunk_mb` (16 MiB) runs (its own `forward`) on slices of the batch, and the results are concatenated
  (exact: samples are independent in eval mode). At align-base's 289 px the first stages' maps are 16-64 MiB
  for a batch of 4; sliced, they stay in cache from one conv to the next and the allocator recycles their
  buffers, where each fresh 64 MiB map cost ~16k page faults. Attribute reads pass through the wrappers
  (`blocks[3].dw_conv` still works); a hook on the block itself fires once per slice;
- text: the text tower's own padding-free path (`Bert.forward(packed=True)`, see model/bert.py) is switched on
  for `encode_text` (so `get_text_features`, the model's forward and every command) of [CLS]-pooled towers,
  and a direct call of the text tower has texts padded to a fixed length (the processor pads to 64) cut to the
  longest real text in eager mode (masked trailing pads are never attended). Under torch.compile neither
  happens: call `trim_padding` yourself before a compiled text tower.

Fusing never changes the answer: `fuse_for_inference` runs the model once before and once after on a tiny
input (one image at the smallest size, two short texts). A block whose output moved beyond float rounding (a
module it cannot fuse, an override that the swaps would break) gets its original modules back, a text tower
whose packed path differs runs padded, and one warning names what was left unfused.

A fused model refuses to train: `model.train()`, a forward in training mode and asking for gradients of the
folded weights all raise (in `FusedConv2d`), because the folded weights are no longer the checkpoint's
parameters. Gradients with respect to the inputs (saliency maps) still work. Because the gate multiplies in
place, a forward hook on a fused block's `dw_conv` sees that map before the gate but holds it after; hook an
unfused model to study the insides of a block (block outputs and `forward_intermediates` are never modified).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model.align import AlignModel
from ..model.bert import trim_padding
from ..model.efficientnet import EfficientNet, SqueezeExcite
from ..model.input_checks import min_image_size

__all__ = ["FusedConv2d", "InPlaceGate", "SlicedBatch", "fold_bn", "fuse_for_inference", "is_fused", "trim_padding"]

FUSED_ERROR = "fused for inference; reload the model to train"


def _onednn_ready() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


_ONEDNN = _onednn_ready()
_ACTS = {"": "none", "silu": "swish"}  # FusedConv2d.act -> oneDNN post-op name


def _onednn_conv(conv: FusedConv2d, x: torch.Tensor) -> torch.Tensor:
    """conv + bias (+ SiLU) as one oneDNN call: (B, C_in, H, W) -> (B, C_out, H', W'), channels_last."""
    return torch.ops.mkldnn._convolution_pointwise(
        x,
        conv._packed_weight(x),
        conv.bias,
        list(conv.padding),
        list(conv.stride),
        list(conv.dilation),
        conv.groups,
        _ACTS[conv.act],
        [],
        "",
    )


@functools.cache
def onednn_agrees() -> bool:
    """Once per process: do the private oneDNN op and the plain conv + SiLU give the same maps here?

    Checks a depthwise and a 1x1 conv of random weights, NCHW and NHWC inputs. On a mismatch or an error
    (a torch whose private op changed) it warns once and every FusedConv2d runs the plain way.
    """
    if not _ONEDNN:
        return False
    g = torch.Generator().manual_seed(0)
    try:
        for groups, k, ch in ((8, 3, 8), (1, 1, 8)):
            conv = FusedConv2d(ch, 16 if groups == 1 else ch, k, padding=k // 2, groups=groups).eval()
            conv.act = "silu"
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
                for x in (torch.randn(2, ch, 9, 7, generator=g), torch.randn(2, ch, 6, 6, generator=g)):
                    x = x if x.shape[-1] == 7 else x.contiguous(memory_format=torch.channels_last)
                    torch.testing.assert_close(_onednn_conv(conv, x), conv._plain(x), atol=1e-4, rtol=1e-4)
    except (RuntimeError, AssertionError) as err:
        warnings.warn(
            f"oneDNN's fused conv does not agree with the plain conv in torch {torch.__version__} ({err}); "
            "fused models run conv then SiLU instead",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


class FusedConv2d(nn.Conv2d):
    """A convolution with the following BatchNorm folded in, and with `act="silu"` the SiLU after it.

    Inference only: training it raises. On the CPU in fp32 it runs as one oneDNN conv + bias + SiLU call with
    weights reordered once (the reorder is cached on the module, never saved); elsewhere as conv then SiLU.
    """

    act: str = ""
    onednn: bool = True  # False: never the oneDNN call (asked for, or after it failed once)

    def train(self, mode: bool = True) -> FusedConv2d:
        if mode:
            raise RuntimeError(f"this model was {FUSED_ERROR}")
        return super().train(False)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", act={self.act}" if self.act else "")

    def __getstate__(self) -> dict[str, Any]:
        # The oneDNN weight is an opaque tensor that neither pickles nor deep-copies; it is rebuilt on use.
        state = super().__getstate__()
        state.pop("_onednn_weight", None)
        return state

    def _use_onednn(self, x: torch.Tensor) -> bool:
        return (
            _ONEDNN
            and torch.backends.mkldnn.enabled
            and x.device.type == "cpu"
            and x.dim() == 4
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and x.requires_grad)  # the oneDNN op has no backward
            and not torch.compiler.is_compiling()  # inductor fuses the plain ops itself
            and self.onednn
            and onednn_agrees()
        )

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight in oneDNN's blocked layout, reordered on first use and again if the weight changes."""
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype)
        cached = self.__dict__.get("_onednn_weight")
        if cached is None or cached[0] != key:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                w.detach(), list(self.padding), list(self.stride), list(self.dilation), self.groups, list(x.shape)
            )
            cached = self.__dict__["_onednn_weight"] = (key, packed)
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError(f"forward in training mode: this model was {FUSED_ERROR}")
        if self.weight.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(f"gradients for folded weights requested: this model was {FUSED_ERROR}")
        if self._use_onednn(x):
            try:
                return _onednn_conv(self, x)
            except RuntimeError as err:
                y = self._plain(x)  # a bad input raises PyTorch's own error here, and oneDNN stays on
                self.onednn = False
                warnings.warn(
                    f"oneDNN's fused conv failed ({err}); this layer runs as conv then SiLU from now on",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return y
        return self._plain(x)

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return F.silu(y) if self.act == "silu" else y


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> FusedConv2d:
    """A FusedConv2d computing `bn(conv(x))` with `bn`'s running statistics (eval-mode BatchNorm)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if conv.out_channels != bn.num_features:
        raise ValueError(f"conv has {conv.out_channels} output channels but the BatchNorm {bn.num_features}")
    fused = FusedConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        # Fold in float64 so the folded weights round once, not twice.
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)  # (C_out,)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        fused.weight.copy_(conv.weight.double() * scale[:, None, None, None])
        fused.bias.copy_((bias - bn.running_mean.double()) * scale + bn.bias.double())
    fused.weight.requires_grad_(False)
    fused.bias.requires_grad_(False)
    return fused.eval()


# (conv, BatchNorm, activation) attribute names of the stem and of each MBConv block ("" = no activation).
_STEM_PAIRS = (("conv", "bn", "act"),)
_BLOCK_PAIRS = (
    ("expand_conv", "expand_bn", "expand_act"),
    ("dw_conv", "dw_bn", "dw_act"),
    ("project_conv", "project_bn", ""),
)

# A swap to undo: (parent module, attribute name, the module that was there).
Swap = tuple[nn.Module, str, nn.Module]


def _swap(parent: nn.Module, name: str, new: nn.Module, undo: list[Swap]) -> None:
    undo.append((parent, name, getattr(parent, name)))
    setattr(parent, name, new)


def _undo(undo: list[Swap]) -> None:
    for parent, name, old in reversed(undo):
        setattr(parent, name, old)
    undo.clear()


def _fold_pairs(module: nn.Module, pairs: tuple[tuple[str, str, str], ...], undo: list[Swap] | None = None) -> None:
    """Fold each (conv, BatchNorm[, SiLU]) the module has, as module swaps recorded in `undo`."""
    undo = [] if undo is None else undo
    for conv_name, bn_name, act_name in pairs:
        conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
        if type(conv) is not nn.Conv2d or not isinstance(bn, nn.BatchNorm2d) or _hooked(conv) or _hooked(bn):
            continue  # a block without an expand conv, a custom module, a hooked one, or already folded
        fused = fold_bn(conv, bn)
        _swap(module, conv_name, fused, undo)
        _swap(module, bn_name, nn.Identity(), undo)
        act = getattr(module, act_name, None) if act_name else None
        if type(act) is nn.SiLU and not _hooked(act):
            fused.act = "silu"
            _swap(module, act_name, nn.Identity(), undo)


def _hooked(module: nn.Module) -> bool:
    """A module with forward hooks is never swapped out: its hooks would stop firing."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


class _Wrapper(nn.Module):
    """Runs `self.module`'s own forward, and lets attribute reads pass through to it."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")  # absent while a copy or an unpickled model is being built
            if not modules or "module" not in modules:
                raise
            return getattr(modules["module"], name)


_PLAIN_SE_FORWARD = SqueezeExcite.forward  # as imported: a patched or overridden forward is not bypassed


class InPlaceGate(_Wrapper):
    """Around a SqueezeExcite: the gate multiplies the depthwise map in place when no gradient flows through it
    and nothing hooks the module; nothing else reads that map, and a fresh (B, C, H, W) buffer per block costs
    page faults on a small CPU. Otherwise the module's own forward runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        se = self.module
        if (torch.is_grad_enabled() and x.requires_grad) or _hooked(se):
            return se(x)
        return x.mul_(se.gate(x))  # (B, C, H, W)


class SlicedBatch(_Wrapper):
    """Around an image block: on the CPU in eager mode, a large batch runs through the block's own forward in
    slices of at most `cpu_chunk_bytes` of expanded map (None: never slices)."""

    def __init__(self, module: nn.Module, cpu_chunk_bytes: int | None):
        super().__init__(module)
        self.cpu_chunk_bytes = cpu_chunk_bytes

    def chunk_size(self, x: torch.Tensor) -> int:
        """How many samples of `x` (B, in, H, W) to run at once: B, unless `cpu_chunk_bytes` says fewer."""
        dw = getattr(self.module, "dw_conv", None)
        if (
            self.cpu_chunk_bytes is None
            or not isinstance(dw, nn.Conv2d)  # a custom block: its map sizes are unknown
            or self.training
            or x.device.type != "cpu"
            or x.ndim != 4
            or torch.compiler.is_compiling()  # inductor plans its own buffers
        ):
            return x.shape[0]
        per_sample = dw.in_channels * x.shape[2] * x.shape[3] * x.element_size()  # one expanded map
        return max(1, self.cpu_chunk_bytes // per_sample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.chunk_size(x)
        if n >= x.shape[0]:
            return self.module(x)
        # Samples are independent in eval mode. Smaller maps stay in the CPU's cache between the expand,
        # depthwise and project convs, and the allocator recycles their buffers instead of mapping (and
        # page-faulting) fresh memory for every large temporary.
        return torch.cat([self.module(chunk) for chunk in x.split(n)])  # (B, out, H/s, W/s)


def _trim_hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
    """Forward pre-hook on the text tower: trim its inputs in eager mode, step aside under torch.compile."""
    if torch.compiler.is_compiling():
        return None
    if "output_hidden_states" in kwargs or "output_attentions" in kwargs:
        return None  # AlignModel.forward's flags: transformers' outputs are full length, padding included
    names = ("input_ids", "attention_mask", "token_type_ids")
    given = dict(zip(names, args, strict=False))
    if any(k in kwargs for k in given):
        raise TypeError(f"text tower got {sorted(set(given) & set(kwargs))} both by position and by name")
    given.update({k: kwargs.pop(k) for k in names if k in kwargs})
    if "input_ids" not in given:
        return None  # let the tower report the missing argument
    ids, mask, types = trim_padding(given["input_ids"], given.get("attention_mask"), given.get("token_type_ids"))
    return (ids, mask, types) + tuple(args[3:]), kwargs


def is_fused(model: nn.Module) -> bool:
    """True if `model` (or the tower passed) has been through `fuse_for_inference` (its convs, or with a
    transformers image tower its text trimming)."""
    return any(isinstance(m, FusedConv2d) or _trim_hook in m._forward_pre_hooks.values() for m in model.modules())


def _fold_vision(vision: nn.Module, chunk_bytes: int | None) -> tuple[list[Swap], list[list[Swap]]]:
    """BatchNorm and SiLU folded into the stem's and every block's convs, squeeze-excite gated in place, each
    block run on slices of the batch; the swaps (stem, per block), so the check can undo what differs. A
    transformers image tower (`--image-tower hf:`) runs as it is: nothing to undo."""
    if not isinstance(vision, EfficientNet):
        return [], []
    stem_undo: list[Swap] = []
    _fold_pairs(vision.stem, _STEM_PAIRS, stem_undo)
    block_undo: list[list[Swap]] = []
    for i, block in enumerate(vision.blocks):
        undo: list[Swap] = []
        _fold_pairs(block, _BLOCK_PAIRS, undo)
        se = getattr(block, "se", None)
        if isinstance(se, SqueezeExcite) and type(se).forward is _PLAIN_SE_FORWARD:
            _swap(block, "se", InPlaceGate(se), undo)
        _swap(vision.blocks, str(i), SlicedBatch(block, chunk_bytes), undo)
        block_undo.append(undo)
    return stem_undo, block_undo


def fuse_for_inference(
    model: AlignModel,
    channels_last: bool | None = None,
    trim_text: bool = True,
    cpu_chunk_mb: float | None = 16,
    onednn: bool = True,
    check: bool = True,
) -> AlignModel:
    """Make `model` an inference-only fast model, in place, and return it (see the module docstring).

    `channels_last` stores the image tower's weights NHWC (inputs may stay NCHW: the first conv converts
    them); None: on CUDA only (on the CPU the oneDNN convs return NHWC maps either way, and NCHW weights
    measured as fast). `trim_text` cuts padded text batches to their longest real text and packs them
    in eager mode. `cpu_chunk_mb`: on the CPU, a block whose expanded maps would exceed this many MiB for the
    whole batch runs on slices of the batch (None: never). `onednn=False` keeps PyTorch's public conv + SiLU on
    the CPU. `check` (default) compares the result with the unfused model on a tiny input and leaves unfused,
    with a warning, whatever differs. Fusing a fused model does nothing more. Reload the model to train it again.
    """
    if cpu_chunk_mb is not None and not cpu_chunk_mb > 0:
        raise ValueError(f"cpu_chunk_mb must be a positive number of MiB or None, got {cpu_chunk_mb!r}")
    vision = model.vision_model
    if is_fused(model):
        return model.eval()
    model.eval()
    model.pack_text = False
    if check:
        with _user_hooks_off(model):
            probe = _Probe(model)

    stem_undo, block_undo = _fold_vision(vision, None if cpu_chunk_mb is None else int(cpu_chunk_mb * 2**20))
    convs = [m for m in vision.modules() if isinstance(m, FusedConv2d)]
    if not onednn or (convs and convs[0].weight.device.type == "cpu" and not onednn_agrees()):
        for conv in convs:
            conv.onednn = False
    if channels_last is None:
        channels_last = next(vision.parameters()).device.type == "cuda"
    if channels_last:
        vision.to(memory_format=torch.channels_last)
    # Mean pooling reads the caller's full-length mask after the tower, so only [CLS] pooling may trim or pack;
    # a transformers text tower (--text-tower hf:) is left as it is.
    trim = None
    if trim_text and model.config.text.pooling == "cls" and model.config.text_tower is None:
        trim = model.text_model.register_forward_pre_hook(_trim_hook, with_kwargs=True)
        model.pack_text = True
    if check:
        with _user_hooks_off(model):
            probe.check(model, stem_undo, block_undo, trim)
        for conv in convs:  # oneDNN picks its weight layout for the input it first sees: let that be a real one
            conv.__dict__.pop("_onednn_weight", None)
    return model.eval()


@contextlib.contextmanager
def _user_hooks_off(model: nn.Module) -> Iterator[None]:
    """The check runs with the caller's forward hooks set aside (they would see the probe's tensors), and
    puts them back in their order. Fusing keeps their effect: hooked modules are never swapped out."""
    saved = []
    for m in model.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            if hooks:
                saved.append((hooks, list(hooks.items())))
                for key in [k for k, h in hooks.items() if h is not _trim_hook]:
                    del hooks[key]
    try:
        yield
    finally:
        for hooks, items in saved:
            still = set(hooks)  # the trimming hook, unless the check removed it
            hooks.clear()
            hooks.update((k, h) for k, h in items if h is not _trim_hook or k in still)


def _tolerance(dtype: torch.dtype) -> float:
    """Largest max-difference, relative to the largest value, that float rounding explains."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


def _differs(fn: Callable[[], torch.Tensor], expected: torch.Tensor) -> str | None:
    """None if fn() equals `expected` to float rounding, else why not."""
    try:
        got = fn()
    except Exception as err:  # noqa: BLE001 - any failure of the fused part means: leave it unfused
        return f"{type(err).__name__}: {err}"
    if got.shape != expected.shape:
        return f"shape {tuple(got.shape)} instead of {tuple(expected.shape)}"
    scale = expected.abs().max().clamp(min=torch.finfo(expected.dtype).tiny)
    rel = ((got.float() - expected.float()).abs().max() / scale.float()).item()
    return None if rel <= _tolerance(expected.dtype) else f"differs by {rel:.1e} of the largest value"


class _Probe:
    """The unfused model's answers on a tiny input: the stem's and every block's input and output, the image
    embedding, and the text embeddings of two short right-padded texts (padded past the longest)."""

    def __init__(self, model: AlignModel):
        vision, cfg = model.vision_model, model.config
        param = next(model.parameters())
        size = min_image_size(cfg.vision) if isinstance(vision, EfficientNet) else cfg.vision.image_size
        g = torch.Generator().manual_seed(0)
        # Smooth, photo-like pixels: on white noise a random tower's maps blow up and amplify rounding.
        coarse = torch.randn(1, cfg.vision.in_chans, 4, 4, generator=g)
        pixels = torch.tanh(F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False))
        self.pixels = pixels.to(device=param.device, dtype=param.dtype)  # (1, C, size, size)
        vocab, pad = cfg.text.vocab_size, cfg.text.pad_token_id
        ids = torch.randint(0, vocab, (2, 6), generator=g)
        ids[ids == pad] = (pad + 1) % vocab
        self.mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], device=param.device)  # (2, 6)
        self.ids = ids.to(param.device).masked_fill(self.mask == 0, pad)  # (2, 6)
        self.seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        parts = {}
        if isinstance(vision, EfficientNet):
            parts = {"stem": vision.stem} | {f"blocks.{i}": b for i, b in enumerate(vision.blocks)}
        handles = [m.register_forward_hook(self._record(name)) for name, m in parts.items()]
        try:
            with torch.no_grad():
                self.image = model.encode_image(self.pixels)  # (1, P)
                self.text = model.encode_text(self.ids, self.mask)  # (2, P)
        finally:
            for h in handles:
                h.remove()

    def _record(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if name not in self.seen and args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                self.seen[name] = (args[0].clone(), out.clone())

        return hook

    def check(self, model: AlignModel, stem_undo: list[Swap], block_undo: list[list[Swap]], trim: Any | None) -> None:
        """Undo the swaps of every part whose answer moved; one warning names them."""
        vision = model.vision_model
        unfused: list[str] = []
        with torch.no_grad():
            # The whole tower first; only when it moved, block by block on the recorded inputs to find which.
            if _differs(lambda: model.encode_image(self.pixels), self.image) is not None:
                parts = [("stem", getattr(vision, "stem", None), stem_undo)]
                parts += [(f"blocks.{i}", vision.blocks[i], undo) for i, undo in enumerate(block_undo)]
                for name, part, undo in parts:
                    if name not in self.seen or not undo:
                        continue
                    x, expected = self.seen[name]
                    why = _differs(lambda part=part, x=x: part(x.clone()), expected)
                    if why is not None:
                        _undo(undo)
                        unfused.append(f"vision_model.{name} ({type(_unwrap(part)).__name__}): {why}")
                why = _differs(lambda: model.encode_image(self.pixels), self.image)
                if why is not None:  # something outside the blocks: the whole image tower runs unfused
                    for undo in [stem_undo, *block_undo]:
                        _undo(undo)
                    unfused.append(f"vision_model ({type(vision).__name__}): {why}")
            if model.pack_text:
                why = _differs(lambda: model.encode_text(self.ids, self.mask), self.text)
                if why is not None:
                    model.pack_text = False
                    unfused.append(f"text_model ({type(model.text_model).__name__}), packed text: {why}")
            if trim is not None and not model.pack_text:  # packing trims too: checked above
                why = _differs(lambda: model.encode_text(self.ids, self.mask), self.text)
                if why is not None:
                    trim.remove()
                    unfused.append(f"text_model ({type(model.text_model).__name__}), trimmed text: {why}")
        if unfused:
            warnings.warn(
                "fuse_for_inference left these parts unfused, since fusing them changed their answer:\n  "
                + "\n  ".join(unfused),
                RuntimeWarning,
                stacklevel=3,
            )


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, _Wrapper) else module
