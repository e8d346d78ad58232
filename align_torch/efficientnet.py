"""EfficientNet image tower as ALIGN uses it: stem, 55 MBConv blocks (for B7 scaling), mean pooling.

Reads top to bottom like the paper: `Stem` -> `MBConv` x N -> pool. `blocks` is one flat list in the same
order as transformers' `vision_model.encoder.blocks`, so "block 17" means the same block in both.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import VisionConfig

ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


def make_act(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None


class DropPath(nn.Module):
    """Per-sample stochastic depth: zero a sample's residual branch with probability p, rescale the rest."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1, 1)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.4f}"


class Stem(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        out_ch = cfg.channels(cfg.stem_ch)
        self.conv = nn.Conv2d(cfg.in_chans, out_ch, 3, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=cfg.bn_eps, momentum=cfg.bn_momentum)
        self.act = make_act(cfg.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # transformers (and hence the checkpoint's numbers) pad right/bottom by one, then a "valid" conv:
        # 289 -> 144. This is neither PyTorch's symmetric nor TF's "SAME" padding (which gives 145).
        x = F.pad(x, (0, 1, 0, 1))  # (B, 3, H+1, W+1)
        return self.act(self.bn(self.conv(x)))  # (B, C, H/2, W/2)


class SqueezeExcite(nn.Module):
    """Channel gate: global mean -> reduce -> act -> expand -> sigmoid, times the input.

    `inplace=True` (set by `fuse_for_inference`) gates the input in place when no gradient flows through it.
    """

    def __init__(self, ch: int, se_ch: int, act: str):
        super().__init__()
        self.reduce = nn.Conv2d(ch, se_ch, 1)
        self.act = make_act(act)
        self.expand = nn.Conv2d(se_ch, ch, 1)
        self.inplace = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        gate = torch.sigmoid(self.expand(self.act(self.reduce(s))))  # (B, C, 1, 1)
        if self.inplace and not (torch.is_grad_enabled() and x.requires_grad):
            return x.mul_(gate)
        return x * gate


class MBConv(nn.Module):
    """Mobile inverted bottleneck: [1x1 expand] -> kxk depthwise -> squeeze-excite -> 1x1 project [+ input]."""

    def __init__(
        self,
        cfg: VisionConfig,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        expand: int,
        drop_path: float,
        symmetric_pad: bool = False,
        first_in_stage: bool = False,
    ):
        super().__init__()
        mid = in_ch * expand
        bn = dict(eps=cfg.bn_eps, momentum=cfg.bn_momentum)
        if expand != 1:
            self.expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(mid, **bn)
            self.expand_act = make_act(cfg.act)
        else:
            self.expand_conv = self.expand_bn = self.expand_act = None

        # Stride 1: "same" padding. Stride 2: transformers pads (k//2 - 1) left/top and k//2 right/bottom
        # (ZeroPad2d + "valid" conv), unless the block is listed in `depthwise_padding` (symmetric k//2).
        self.dw_pad: tuple[int, int, int, int] | None = None
        conv_pad = kernel // 2
        if stride == 2 and not symmetric_pad:
            self.dw_pad = (kernel // 2 - 1, kernel // 2, kernel // 2 - 1, kernel // 2)
            conv_pad = 0
        self.dw_conv = nn.Conv2d(mid, mid, kernel, stride=stride, padding=conv_pad, groups=mid, bias=False)
        self.dw_bn = nn.BatchNorm2d(mid, **bn)
        self.dw_act = make_act(cfg.act)

        # The SE width is a fraction of the block's *input* channels, not of the expanded width.
        self.se = SqueezeExcite(mid, max(1, int(in_ch * cfg.se_ratio)), cfg.act)

        self.project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_ch, **bn)

        # As transformers: a stage's first block never adds its input, even where width rounding makes its
        # in and out channels equal (tiny configs; never at B0-B7 widths, where the original would add it).
        self.has_residual = stride == 1 and in_ch == out_ch and not first_in_stage
        self.drop_path = DropPath(drop_path) if self.has_residual else nn.Identity()

        # CPU inference only (set by `fuse_for_inference`): split the batch so that no expanded map is larger
        # than this many bytes. None: never split.
        self.cpu_chunk_bytes: int | None = None

    def chunk_size(self, x: torch.Tensor) -> int:
        """How many samples of `x` (B, in, H, W) to run at once: B, unless `cpu_chunk_bytes` says fewer."""
        if self.cpu_chunk_bytes is None or self.training or x.device.type != "cpu" or torch.compiler.is_compiling():
            return x.shape[0]  # inductor plans its own buffers
        per_sample = self.dw_conv.in_channels * x.shape[2] * x.shape[3] * x.element_size()  # one expanded map
        return max(1, self.cpu_chunk_bytes // per_sample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.chunk_size(x)
        if n < x.shape[0]:
            # Samples are independent in eval mode. Smaller maps stay in the CPU's cache between the expand,
            # depthwise and project convs, and the allocator recycles their buffers instead of mapping (and
            # page-faulting) fresh memory for every large temporary.
            return torch.cat([self.forward_batch(chunk) for chunk in x.split(n)])  # (B, out, H/s, W/s)
        return self.forward_batch(x)

    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        """The block on the whole of `x`, never split."""
        shortcut = x  # (B, in, H, W)
        if self.expand_conv is not None:
            x = self.expand_act(self.expand_bn(self.expand_conv(x)))  # (B, mid, H, W)
        if self.dw_pad is not None:
            x = F.pad(x, self.dw_pad)
        x = self.dw_act(self.dw_bn(self.dw_conv(x)))  # (B, mid, H/s, W/s)
        x = self.se(x)
        x = self.project_bn(self.project_conv(x))  # (B, out, H/s, W/s)
        if self.has_residual:
            x = self.drop_path(x) + shortcut
        return x


@dataclass
class VisionIntermediates:
    """`hidden_states[0]` is the stem output, `hidden_states[i + 1]` block i's output (None if not asked)."""

    hidden_states: list[torch.Tensor | None]
    last_hidden_state: torch.Tensor | None  # (B, C, h, w) final map, None when stopped early


class EfficientNet(nn.Module):
    """The ALIGN image tower. `forward(pixels)` returns the pooled (B, num_features) image embedding."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = Stem(cfg)
        blocks: list[MBConv] = []
        stage_ends: list[int] = []
        n = cfg.num_blocks
        for stage in cfg.stages:
            out_ch = cfg.channels(stage.out_ch)
            for j in range(cfg.repeats(stage.repeats)):
                i = len(blocks)
                blocks.append(
                    MBConv(
                        cfg,
                        in_ch=cfg.channels(stage.in_ch) if j == 0 else out_ch,
                        out_ch=out_ch,
                        kernel=stage.kernel,
                        stride=stage.stride if j == 0 else 1,
                        expand=stage.expand,
                        drop_path=cfg.drop_path_rate * i / n,
                        symmetric_pad=i in cfg.depthwise_padding,
                        first_in_stage=j == 0,
                    )
                )
            stage_ends.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)
        self.stage_ends: tuple[int, ...] = tuple(stage_ends)  # index of the last block of each stage
        self.num_features = cfg.num_features
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            contexts = functools.partial(_checkpoint_contexts, block)
            return checkpoint(block, x, use_reentrant=False, context_fn=contexts)
        return block(x)

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the final (B, num_features, ~H/32, ~W/32) feature map."""
        x = self.stem(pixel_values)
        for block in self.blocks:
            x = self._run_block(block, x)
        return x

    def forward_intermediates(
        self, pixel_values: torch.Tensor, indices: list[int] | None = None, stop_early: bool = True
    ) -> VisionIntermediates:
        """Stem and block outputs. `indices` selects positions in hidden_states (0 = stem, i + 1 = block i;
        negatives count from the end); with `stop_early`, no block after the last selected one runs."""
        n = len(self.blocks) + 1
        wanted = set(range(n)) if indices is None else {i % n if -n <= i < n else _bad_index(i, n) for i in indices}
        last = max(wanted) if (stop_early and wanted) else n - 1
        hidden: list[torch.Tensor | None] = [None] * n
        x = self.stem(pixel_values)
        if 0 in wanted:
            hidden[0] = x
        for i, block in enumerate(self.blocks[:last]):
            x = self._run_block(block, x)
            if i + 1 in wanted:
                hidden[i + 1] = x
        return VisionIntermediates(hidden_states=hidden, last_hidden_state=x if last == n - 1 else None)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C). transformers writes this as AvgPool2d(640, ceil_mode=True), which on any
        map smaller than 640 px is exactly the mean."""
        if self.cfg.pooling == "max":
            return features.amax(dim=(2, 3))
        return features.mean(dim=(2, 3))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(pixel_values))


def _checkpoint_contexts(
    block: nn.Module,
) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """(forward context, recompute context) for torch.utils.checkpoint."""
    return contextlib.nullcontext(), _keep_bn_stats(block)


@contextlib.contextmanager
def _keep_bn_stats(block: nn.Module) -> Iterator[None]:
    """Checkpointing recomputes the block's forward in the backward pass, still in train mode, so its
    BatchNorms would update their running statistics a second time; restore them after the recompute."""
    saved = [
        (buf, buf.clone())
        for m in block.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for buf in m.buffers()
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def _bad_index(i: int, n: int) -> int:
    raise IndexError(f"hidden-state index {i} out of range for {n} states (stem + {n - 1} blocks)")
