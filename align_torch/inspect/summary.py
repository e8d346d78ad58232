"""Parameters, FLOPs and output shapes per stage and per block, for any config, without weights.

The model is built on PyTorch's "meta" device, so nothing is allocated or initialised and an align-base
summary costs well under a second. FLOPs are 2 x multiply-adds of every convolution, linear layer and
attention matmul (QK^T and PV), for one image at the config's resolution and one text of `text_tokens`;
normalisation, activations, pooling and squeeze-excite gating are not counted. A transformers tower
(`--image-tower` / `--text-tower hf:`) is listed by its top-level parts; its convolutions and linear layers are
counted, its attention matmuls (run by functions, not modules) are not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from ..defaults import TEXT_LENGTH
from ..model.bert import Attention
from ..model.config import AlignConfig
from ..model.hf_image import HFImageTower
from ..model.hf_text import HFTextTower


@dataclass(frozen=True)
class SummaryRow:
    """One stem/block/layer, or one stage (group of them), of one tower; one sample."""

    tower: str  # "vision", "text" or "joint"
    name: str  # e.g. "stem", "block 12", "stage 3", "embeddings", "layer 4", "text_projection"
    params: int
    flops: int
    output_shape: tuple[int, ...]  # without the batch dimension
    stage: str | None = None  # for a block or layer: the name of the stage row it belongs to


@dataclass(frozen=True)
class ModelSummary:
    image_size: int
    text_tokens: int
    stages: list[SummaryRow]  # vision stem + stages, text embeddings + encoder (+ pooler), joint heads
    blocks: list[SummaryRow]  # every stem/block/embeddings/layer/head row
    vision_params: int
    text_params: int
    joint_params: int  # projections and temperature
    vision_flops: int
    text_flops: int

    @property
    def total_params(self) -> int:
        return self.vision_params + self.text_params + self.joint_params

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_params"] = self.total_params
        return d

    def table(self, blocks: bool = True) -> str:
        """A plain-text table: each stage, then (with `blocks`) its blocks indented under it."""
        lines = [f"{'':34}{'params':>14}{'GFLOP':>10}  output"]
        for stage in self.stages:
            lines.append(_line(stage, indent=0))
            if blocks:
                lines += [_line(r, indent=2) for r in self.blocks if (r.tower, r.stage) == (stage.tower, stage.name)]
        lines.append("")
        lines.append(
            f"vision: {count(self.vision_params)} params, {self.vision_flops / 1e9:.2f} GFLOP at {self.image_size} px"
        )
        lines.append(
            f"text:   {count(self.text_params)} params, {self.text_flops / 1e9:.2f} GFLOP at {self.text_tokens} tokens"
        )
        lines.append(f"total:  {count(self.total_params)} params (projections and temperature: {self.joint_params:,})")
        return "\n".join(lines)


def count(n: int) -> str:
    """A parameter count in the unit that keeps 3-4 significant digits (227.5K, 62.1M): in millions, a tiny
    model's 0.17M + 0.05M printed as 0.2M + 0.1M and a total of 0.2M that is not their sum."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:,}"


def _line(row: SummaryRow, indent: int) -> str:
    label = f"{' ' * indent}{row.tower} {row.name}"
    shape = "x".join(str(s) for s in row.output_shape)
    return f"{label:34}{row.params:>14,}{row.flops / 1e9:>10.3f}  {shape}"


def _conv_flops(m: nn.Conv2d, out: torch.Tensor) -> int:
    per_output = (m.in_channels // m.groups) * math.prod(m.kernel_size)
    return 2 * out[0].numel() * per_output


def _linear_flops(m: nn.Linear, out: torch.Tensor) -> int:
    return 2 * (out[0].numel() // m.out_features) * m.in_features * m.out_features


def _attention_flops(m: Attention, x: torch.Tensor) -> int:
    T, D = x.shape[1], x.shape[2]
    return 2 * 2 * T * T * D  # QK^T (T x T x head_dim per head) and PV, over all heads


def summarize(config: AlignConfig, image_size: int | None = None, text_tokens: int = TEXT_LENGTH) -> ModelSummary:
    """Per-stage and per-block parameters, FLOPs and output shapes of `config` (one image, one text).

    The steps: check the sizes; build the model on the meta device; name the rows (stem, blocks, embeddings,
    layers, heads); run one image and one text with hooks that count FLOPs and record shapes; make one row
    per named module; group the rows into stages."""
    from ..model.align import AlignModel

    image_size = _checked_sizes(config, image_size, text_tokens)
    with torch.device("meta"):
        model = AlignModel(config).eval()
    vision_rows, text_rows, joint_rows = _named_rows(model)
    flops, shapes = _measure(model, image_size, text_tokens, [m for _, m in vision_rows + text_rows + joint_rows])

    def row(tower: str, name: str, module: nn.Module) -> SummaryRow:
        return SummaryRow(
            tower=tower,
            name=name,
            params=sum(p.numel() for p in module.parameters()),
            flops=sum(flops.get(m, 0) for m in module.modules()),
            output_shape=shapes[module],
        )

    vision, text = model.vision_model, model.text_model
    vision_stages, vision_blocks = [row("vision", n, m) for n, m in vision_rows], []
    if not isinstance(vision, HFImageTower):  # a transformers tower's rows are its own parts, not grouped
        vision_stages, vision_blocks = _group_vision(vision_stages, vision.stage_ends)
    text_stages, text_blocks = [row("text", n, m) for n, m in text_rows], []
    if not isinstance(text, HFTextTower):
        text_stages, text_blocks = _group_text(text_stages, len(text.layers))
    joint = [row("joint", n, m) for n, m in joint_rows]
    stages = vision_stages + text_stages + joint
    blocks = (vision_blocks or vision_stages) + (text_blocks or text_stages) + joint
    return ModelSummary(
        image_size=image_size,
        text_tokens=text_tokens,
        stages=stages,
        blocks=blocks,
        vision_params=sum(p.numel() for p in vision.parameters()),
        text_params=sum(p.numel() for p in text.parameters()),
        joint_params=sum(
            p.numel() for n, p in model.named_parameters() if not n.startswith(("vision_model.", "text_model."))
        ),
        vision_flops=sum(r.flops for r in blocks if r.tower == "vision"),
        text_flops=sum(r.flops for r in blocks if r.tower == "text"),
    )


def _checked_sizes(config: AlignConfig, image_size: int | None, text_tokens: int) -> int:
    """The image side to summarise at (the config's by default), after checking both sizes."""
    image_size = image_size or config.vision.image_size
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 px, got {image_size}")
    if not 1 <= text_tokens <= config.text.max_position_embeddings:
        raise ValueError(
            f"text length must be 1..{config.text.max_position_embeddings} tokens (the model's positions), "
            f"got {text_tokens}"
        )
    return image_size


Rows = list[tuple[str, nn.Module]]


def _named_rows(model: nn.Module) -> tuple[Rows, Rows, Rows]:
    """(name, module) of each row: the vision stem and blocks; the text embeddings, layers and the pooler;
    the joint projections."""
    vision, text = model.vision_model, model.text_model
    if isinstance(vision, HFImageTower):  # a transformers tower: its top-level parts (embeddings, encoder, ...)
        vision_rows = list(vision.encoder.named_children())
    else:
        vision_rows = [("stem", vision.stem)] + [(f"block {i}", b) for i, b in enumerate(vision.blocks)]
    if isinstance(text, HFTextTower):
        text_rows = list(text.encoder.named_children())
    else:
        text_rows = [("embeddings", text.embeddings)] + [(f"layer {i}", m) for i, m in enumerate(text.layers)]
        text_rows.append(("pooler (unused by ALIGN)", text.pooler))
    joint_rows = [("text_projection", model.text_projection)]
    if model.image_projection is not None:
        joint_rows.insert(0, ("image_projection", model.image_projection))
    return vision_rows, text_rows, joint_rows


def _measure(
    model: nn.Module, image_size: int, text_tokens: int, row_modules: list[nn.Module]
) -> tuple[dict[nn.Module, int], dict[nn.Module, tuple[int, ...]]]:
    """FLOPs of every conv, linear and attention module, and the output shape (no batch) of each row's module,
    from one meta-device forward of a (1, C, image_size, image_size) image and a (1, text_tokens) text."""
    flops: dict[nn.Module, int] = {}
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def count(m: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(m, nn.Conv2d):
            flops[m] = flops.get(m, 0) + _conv_flops(m, out)
        elif isinstance(m, nn.Linear):
            flops[m] = flops.get(m, 0) + _linear_flops(m, out)
        elif isinstance(m, Attention):
            flops[m] = flops.get(m, 0) + _attention_flops(m, args[0])

    def record_shape(m: nn.Module, args: tuple, out: Any) -> None:
        out = out[0] if isinstance(out, tuple) else out  # a BERT layer returns (hidden, probs)
        out = getattr(out, "last_hidden_state", out)  # a transformers encoder returns a ModelOutput
        shapes[m] = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else ()

    vision, text = model.vision_model, model.text_model
    handles = [
        m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, Attention))
    ]
    handles += [m.register_forward_hook(record_shape) for m in row_modules]
    try:
        with torch.no_grad():
            pixels = torch.zeros(1, model.config.vision.in_chans, image_size, image_size, device="meta")
            model.project_image(vision(pixels).pooler_output)
            ids = torch.zeros(1, text_tokens, dtype=torch.long, device="meta")
            hidden = text(ids).last_hidden_state  # no mask: a transformers mask check reads values
            model.text_projection(model.pool_text(hidden))
    finally:
        for h in handles:
            h.remove()
    for m in row_modules:  # listed for their parameters though the forward never runs them (BERT's pooler)
        shapes.setdefault(m, (m.out_features,) if isinstance(m, nn.Linear) else ())
    return flops, shapes


def _group_vision(rows: list[SummaryRow], stage_ends: tuple[int, ...]) -> tuple[list[SummaryRow], list[SummaryRow]]:
    """(stage rows, block rows each marked with its stage) of the EfficientNet: the stem, then each stage.
    `rows` is the stem, then the blocks (block i is row i + 1)."""
    stages, blocks, start = [rows[0]], [rows[0]], 0
    for s, end in enumerate(stage_ends):
        name = f"stage {s} (blocks {start}-{end})"
        members = [replace(r, stage=name) for r in rows[1 + start : 2 + end]]
        stages.append(_group("vision", name, members))
        blocks += members
        start = end + 1
    return stages, blocks


def _group_text(rows: list[SummaryRow], n_layers: int) -> tuple[list[SummaryRow], list[SummaryRow]]:
    """(stage rows, layer rows marked with their stage) of the native BERT: the embeddings, the encoder and the
    pooler. `rows` is the embeddings, the layers and the pooler."""
    name = f"encoder (layers 0-{n_layers - 1})"
    layers = [replace(r, stage=name) for r in rows[1 : 1 + n_layers]]
    return [rows[0], _group("text", name, layers), *rows[1 + n_layers :]], [rows[0], *layers, *rows[1 + n_layers :]]


def _group(tower: str, name: str, members: list[SummaryRow]) -> SummaryRow:
    return SummaryRow(
        tower=tower,
        name=name,
        params=sum(r.params for r in members),
        flops=sum(r.flops for r in members),
        output_shape=members[-1].output_shape,
    )
