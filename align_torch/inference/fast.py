"""The inference fast path: `fuse_for_inference(model)` turns a loaded AlignModel into an inference-only one.

The model files (efficientnet.py, bert.py, model.py) hold the recipe only; everything here is for inference.
`fuse_for_inference` swaps in subclasses that own the fast path (`FusedMBConv`, `FusedSqueezeExcite`,
`FusedConv2d`, `FusedAlignModel`), so an unfused model runs the paper's sequence and nothing else.

What it does, and why each step is exact (fp32 outputs agree with the unfused model to float rounding):
- every BatchNorm is folded into the convolution before it (in eval mode BN is a per-channel affine map,
  so `bn(conv(x)) == conv'(x)` with `w' = w * g / sqrt(v + eps)`, `b' = b - m * g / sqrt(v + eps)`); the BN
  module becomes `nn.Identity`, so every block's `forward`, its hooks and `forward_intermediates` still work;
- the SiLU after a folded conv moves into it (`FusedConv2d.act`) and its module becomes `nn.Identity` too. On
  the CPU in fp32 eager mode a FusedConv2d then runs as one oneDNN call (conv + bias + SiLU as a post-op,
  weights reordered once into oneDNN's blocked layout and cached), and the squeeze-excite gate multiplies
  in place: two passes over each depthwise map instead of four (conv, BatchNorm, SiLU, gate), and none of
  the large temporary buffers whose allocation (page faults) costs as much as the arithmetic on a small CPU.
  The oneDNN op is private to PyTorch (`torch.ops.mkldnn._convolution_pointwise`, checked with torch
  2.13.0), so the first fused model of a process compares it with the plain conv + SiLU on a few layers and,
  if they disagree or the op fails, warns once and runs every conv the plain way.
  Elsewhere (CUDA, autocast, torch.compile, inputs that need gradients) it is the plain conv + F.silu;
- the image tower stays NCHW on the CPU: the oneDNN convs return NHWC maps whatever the layout, and
  bench/README.md measures NCHW and channels_last weights as equally fast there within noise. On CUDA the tower
  moves to channels_last, where cuDNN runs depthwise and 1x1 convs faster in NHWC;
- on the CPU, a block whose expanded maps for the whole batch exceed `cpu_chunk_mb` (16 MiB) runs on slices of
  the batch and concatenates the results (exact: samples are independent in eval mode). At align-base's
  289 px the first stages' maps are 16-64 MiB for a batch of 4; sliced, they stay in cache from one conv to
  the next and the allocator recycles their buffers, where each fresh 64 MiB map cost ~16k page faults;
- texts padded to a fixed length (the processor pads to 64) are cut to the longest real text before the
  text tower runs: with the padding masked out, [CLS] never sees the trailing pads, so its state does not
  change. The cut reads the mask's values, which torch.compile cannot trace without a graph break, so it
  runs only in eager mode; call `trim_padding` yourself before a compiled text tower;
- `encode_text` (so `get_text_features`, the model's forward and every command) goes further for [CLS]
  -pooled towers: `encode_text_packed` runs every per-token op on the real tokens only (no padding at all
  outside attention), and the last layer on [CLS] only. Mean-pooled towers keep the trimmed padded path.

A fused model refuses to train: `model.train()`, a forward in training mode and asking for gradients of the
folded weights all raise, because the folded weights are no longer the checkpoint's parameters. Gradients
with respect to the inputs (saliency maps) still work. Because the gate multiplies in place, a forward hook
on a fused block's `dw_conv` sees that map before the gate but holds it after; hook an unfused model to
study the insides of a block (block outputs and `forward_intermediates` are never modified).
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model.align import AlignModel
from ..model.efficientnet import MBConv, SqueezeExcite
from ..model.input_checks import check_text

if TYPE_CHECKING:
    from ..model.bert import Bert

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


def _fold_pairs(module: nn.Module, pairs: tuple[tuple[str, str, str], ...]) -> None:
    for conv_name, bn_name, act_name in pairs:
        conv, bn = getattr(module, conv_name), getattr(module, bn_name)
        if conv is None or not isinstance(bn, nn.BatchNorm2d):
            continue  # a block without an expand conv, or already folded
        fused = fold_bn(conv, bn)
        setattr(module, conv_name, fused)
        setattr(module, bn_name, nn.Identity())
        if act_name and type(getattr(module, act_name)) is nn.SiLU:
            fused.act = "silu"
            setattr(module, act_name, nn.Identity())


class FusedSqueezeExcite(SqueezeExcite):
    """The gate multiplies the depthwise map in place when no gradient flows through it: nothing else reads
    that map, and a fresh (B, C, H, W) buffer per block costs page faults on a small CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        return x.mul_(self.gate(x))


class FusedMBConv(MBConv):
    """An MBConv that, on the CPU in eager mode, runs large batches in slices of at most `cpu_chunk_bytes`
    of expanded map (None: never slices)."""

    cpu_chunk_bytes: int | None = None

    def chunk_size(self, x: torch.Tensor) -> int:
        """How many samples of `x` (B, in, H, W) to run at once: B, unless `cpu_chunk_bytes` says fewer."""
        if self.cpu_chunk_bytes is None or self.training or x.device.type != "cpu" or torch.compiler.is_compiling():
            return x.shape[0]  # inductor plans its own buffers
        per_sample = self.dw_conv.in_channels * x.shape[2] * x.shape[3] * x.element_size()  # one expanded map
        return max(1, self.cpu_chunk_bytes // per_sample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.chunk_size(x)
        if n >= x.shape[0]:
            return super().forward(x)
        # Samples are independent in eval mode. Smaller maps stay in the CPU's cache between the expand,
        # depthwise and project convs, and the allocator recycles their buffers instead of mapping (and
        # page-faulting) fresh memory for every large temporary.
        return torch.cat([super(FusedMBConv, self).forward(chunk) for chunk in x.split(n)])  # (B, out, H/s, W/s)


class FusedAlignModel(AlignModel):
    """An AlignModel after `fuse_for_inference`: `encode_text` takes the packed path for [CLS]-pooled towers."""

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """`AlignModel.encode_text`, through `encode_text_packed` where it is exact and traceable."""
        check_text(self.config.text, input_ids, attention_mask, token_type_ids)  # before the mask is read
        packable = (
            self.config.text.pooling == "cls"
            and self.config.text_tower is None  # a transformers tower runs as it is
            and not torch.compiler.is_compiling()  # packing depends on the mask's values
            and (attention_mask is None or bool(attention_mask[:, 0].all()))  # right-padded texts only
        )
        if packable:
            return encode_text_packed(self, input_ids, attention_mask, token_type_ids, normalize)
        return super().encode_text(input_ids, attention_mask, token_type_ids, normalize)


def trim_padding(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Cut (B, T) text inputs to the longest real text (B, T'), T' = the last position any mask marks.

    Exact for ALIGN's [CLS] embedding: masked trailing pads are never attended. When every remaining
    position is real the mask is dropped (None), which lets SDPA pick its unmasked kernels. Eager only:
    T' depends on the mask's values.
    """
    if attention_mask is None:
        return input_ids, None, token_type_ids
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    keep = attention_mask.bool()
    # Trailing columns where no text has a real token can go; a column is kept if any row still needs it.
    real = keep.any(dim=0)  # (T,)
    length = int(real.nonzero().max()) + 1 if bool(real.any()) else 1
    input_ids = input_ids[:, :length]  # (B, T')
    keep = keep[:, :length]  # (B, T')
    if token_type_ids is not None:
        token_type_ids = token_type_ids[:, :length]  # (B, T')
    mask = None if bool(keep.all()) else attention_mask[:, :length]
    return input_ids, mask, token_type_ids


def _to_heads(t: torch.Tensor, keep: torch.Tensor, heads: int) -> torch.Tensor:
    """Packed (N, D) tokens -> zero-padded (B, heads, T', D / heads) for attention."""
    B, T = keep.shape
    out = t.new_zeros(B, T, t.shape[-1])
    out[keep] = t  # (B, T', D)
    return out.view(B, T, heads, -1).transpose(1, 2)  # (B, H, T', hd)


def packed_cls_states(
    bert: Bert,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, T) padded texts -> (B, D) last-layer [CLS] states, with every per-token op run on real tokens only.

    Padding-free ("packed") BERT: embeddings, projections, MLPs and LayerNorms see the N real tokens as one
    (N, D) matrix; only attention goes back to a padded (B, T') layout. In the last layer only [CLS] rows are
    computed past the keys and values, since nothing else is read. Mirrors `bert.Layer.forward` (post-LN)
    op for op, so it agrees with the padded tower to float rounding. Eager and inference only.
    """
    if bert.training:
        raise RuntimeError("packed_cls_states is for inference; call .eval() first")
    ids, mask, types = trim_padding(input_ids, attention_mask, token_type_ids)
    if mask is None:  # nothing to pack
        return bert(ids, None, types).last_hidden_state[:, 0]
    keep = mask.bool()  # (B, T')
    if not bool(keep[:, 0].all()):
        raise ValueError("every text must start with a real token ([CLS]) to be packed; pad on the right")
    B, T = ids.shape
    lengths = keep.sum(dim=1)  # (B,)
    cls_rows = lengths.cumsum(0) - lengths  # (B,) where each text's [CLS] sits among the packed tokens
    attn_mask = keep[:, None, None, :]  # (B, 1, 1, T')
    x = bert.embeddings(ids, types)[keep]  # (N, D)
    for i, layer in enumerate(bert.layers):
        attn = layer.attn
        H, hd = attn.num_heads, attn.head_dim
        last = i == len(bert.layers) - 1
        k, v = _to_heads(attn.k(x), keep, H), _to_heads(attn.v(x), keep, H)
        if last:
            x = x[cls_rows]  # (B, D): only [CLS] is read after the last layer
            q = attn.q(x).view(B, 1, H, hd).transpose(1, 2)  # (B, H, 1, hd)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, 1, hd)
            y = y.transpose(1, 2).reshape(B, H * hd)  # (B, D)
        else:
            q = _to_heads(attn.q(x), keep, H)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T', hd)
            y = y.transpose(1, 2).reshape(B, T, H * hd)[keep]  # (N, D)
        x = layer.attn_norm(x + attn.out(y))
        x = layer.mlp_norm(x + layer.mlp(x))
    return x if len(bert.layers) else x[cls_rows]


def encode_text_packed(
    model: AlignModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """`model.encode_text` through `packed_cls_states`: the fastest exact text path for padded captions."""
    if model.config.text.pooling != "cls":
        raise ValueError(f"encode_text_packed reads [CLS]; this model pools text by {model.config.text.pooling!r}")
    cls = packed_cls_states(model.text_model, input_ids, attention_mask, token_type_ids)  # (B, D)
    return model.project_text(cls, normalize)  # (B, P)


def _trim_hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
    """Forward pre-hook on the text tower: trim its inputs in eager mode, step aside under torch.compile."""
    if torch.compiler.is_compiling():
        return None
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
    """True if `model` (or the tower passed) has been through `fuse_for_inference`."""
    return any(isinstance(m, FusedConv2d) for m in model.modules())


def fuse_for_inference(
    model: AlignModel,
    channels_last: bool | None = None,
    trim_text: bool = True,
    cpu_chunk_mb: float | None = 16,
    onednn: bool = True,
) -> AlignModel:
    """Make `model` an inference-only fast model, in place, and return it (see the module docstring).

    `channels_last` stores the image tower's weights NHWC (inputs may stay NCHW: the first conv converts
    them); None: on CUDA only (on the CPU the oneDNN convs return NHWC maps either way, and NCHW weights
    measured as fast). `trim_text` cuts padded text batches to their longest real text in eager
    mode. `cpu_chunk_mb`: on the CPU, a block whose expanded maps would exceed this many MiB for the whole
    batch runs on slices of the batch (None: never). `onednn=False` keeps PyTorch's public conv + SiLU on the
    CPU. Fusing a fused model does nothing more. Reload the model to train it again.
    """
    if cpu_chunk_mb is not None and not cpu_chunk_mb > 0:
        raise ValueError(f"cpu_chunk_mb must be a positive number of MiB or None, got {cpu_chunk_mb!r}")
    vision = model.vision_model
    if is_fused(vision):
        return model.eval()
    model.eval()
    _fold_pairs(vision.stem, _STEM_PAIRS)
    for block in vision.blocks:
        _fold_pairs(block, _BLOCK_PAIRS)
        block.__class__ = FusedMBConv
        block.se.__class__ = FusedSqueezeExcite
        block.cpu_chunk_bytes = None if cpu_chunk_mb is None else int(cpu_chunk_mb * 2**20)
    convs = [m for m in vision.modules() if isinstance(m, FusedConv2d)]
    if not onednn or (convs and convs[0].weight.device.type == "cpu" and not onednn_agrees()):
        for conv in convs:
            conv.onednn = False
    if channels_last is None:
        channels_last = vision.stem.conv.weight.device.type == "cuda"
    if channels_last:
        vision.to(memory_format=torch.channels_last)
    model.__class__ = FusedAlignModel
    # Mean pooling reads the caller's full-length mask after the tower, so only [CLS] pooling may trim; a
    # transformers text tower (--text-tower hf:) is left as it is.
    if trim_text and model.config.text.pooling == "cls" and model.config.text_tower is None:
        model.text_model.register_forward_pre_hook(_trim_hook, with_kwargs=True)
    return model.eval()
