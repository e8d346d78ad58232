"""EfficientNet image tower as ALIGN uses it: stem, 55 MBConv blocks (for B7 scaling), mean pooling.

Reads top to bottom like the paper: `Stem` -> `MBConv` x N -> pool. `blocks` is one flat list in the same
order as transformers' `vision_model.encoder.blocks`, so "block 17" means the same block in both.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import VisionConfig
from .indices import take_indices
from .outputs import TupleOutput

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
    """Channel gate: global mean -> reduce -> act -> expand -> sigmoid, times the input."""

    def __init__(self, ch: int, se_ch: int, act: str):
        super().__init__()
        self.reduce = nn.Conv2d(ch, se_ch, 1)
        self.act = make_act(act)
        self.expand = nn.Conv2d(se_ch, ch, 1)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the (B, C, 1, 1) channel weights in (0, 1)."""
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return torch.sigmoid(self.expand(self.act(self.reduce(s))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


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
        # (ZeroPad2d + "valid" conv), unless the config lists the block in `symmetric_pad` (k//2 all round).
        asymmetric = stride == 2 and not symmetric_pad
        lo, hi = kernel // 2 - 1, kernel // 2
        self.dw_pad = nn.ZeroPad2d((lo, hi, lo, hi)) if asymmetric else nn.Identity()
        conv_pad = 0 if asymmetric else kernel // 2
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
        self.drop_path = DropPath(0.0) if self.has_residual else nn.Identity()  # rate: EfficientNet's schedule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x  # (B, in, H, W)
        if self.expand_conv is not None:
            x = self.expand_act(self.expand_bn(self.expand_conv(x)))  # (B, mid, H, W)
        x = self.dw_act(self.dw_bn(self.dw_conv(self.dw_pad(x))))  # (B, mid, H/s, W/s)
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


@dataclass
class VisionOutput(TupleOutput):
    """What the image tower returns; the fields and their order are transformers' (`to_tuple()` as theirs)."""

    last_hidden_state: torch.Tensor  # (B, num_features, h, w) final map
    pooler_output: torch.Tensor  # (B, num_features): the pooled map, ALIGN's image embedding
    hidden_states: tuple[torch.Tensor, ...] | None = None  # stem output, then each block's: 1 + num_blocks


class EfficientNet(nn.Module):
    """The ALIGN image tower. `forward(pixels)` returns a VisionOutput; its `pooler_output` is the pooled
    (B, num_features) image embedding."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = Stem(cfg)
        blocks: list[MBConv] = []
        stage_ends: list[int] = []
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
                        symmetric_pad=i in cfg.symmetric_pad,
                        first_in_stage=j == 0,
                    )
                )
            stage_ends.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)
        self.stage_ends: tuple[int, ...] = tuple(stage_ends)  # index of the last block of each stage
        self.num_features = cfg.num_features
        self.grad_checkpointing = False
        self.set_drop_path_rate(cfg.drop_path_rate)

    def set_drop_path_rate(self, rate: float) -> None:
        """Stochastic depth increasing linearly with depth: block i drops with probability rate * i / N."""
        for i, block in enumerate(self.blocks):
            if isinstance(block.drop_path, DropPath):
                block.drop_path.p = rate * i / len(self.blocks)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    @torch.no_grad()
    def init_weights(self) -> None:
        """EfficientNet's own initialisation (its TensorFlow code, as timm): conv kernels He-normal over the
        fan-out (k * k * out_channels / groups, so k * k for a depthwise conv), conv biases 0, BatchNorm at
        identity (weight 1, bias 0, running mean 0, variance 1). PyTorch's default fan-in uniform instead shrinks
        the activations block by block (BN's running statistics still 0/1 do not undo it in eval mode)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                m.weight.normal_(0.0, (2.0 / fan_out) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # weight 1, bias 0, running mean 0, running var 1, batches tracked 0

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
        self, pixel_values: torch.Tensor, indices: Sequence[int] | None = None, stop_early: bool = False
    ) -> VisionIntermediates:
        """Stem and block outputs. `indices` selects positions in hidden_states (0 = stem, i + 1 = block i;
        negatives count from the end); with `stop_early`, no block after the last selected one runs."""
        n = len(self.blocks) + 1
        wanted = take_indices(indices, n, "image hidden-state")
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

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> VisionOutput:
        """(B, 3, H, W) -> the final map and its pooled embedding; with `output_hidden_states`, also the stem's and
        every block's output, as `forward_intermediates` captures them."""
        if output_hidden_states:
            out = self.forward_intermediates(pixel_values)
            features, hidden = out.last_hidden_state, tuple(out.hidden_states)
        else:
            features, hidden = self.forward_features(pixel_values), None
        return VisionOutput(last_hidden_state=features, pooler_output=self.pool(features), hidden_states=hidden)


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
