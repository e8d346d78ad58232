"""An image tower from any transformers vision encoder (`finetune --image-tower hf:PATH_OR_ID`): ConvNeXt, ViT,
Dinov2, transformers' EfficientNet, SigLIP's vision model... in place of ALIGN's EfficientNet. The tower pools as
its model type does (`pooler_output`) or by the mean over its last hidden state's tokens or positions, and
AlignModel projects the pooled features with a new `image_projection`.

transformers is an optional extra, imported only when such a tower is built (model/hf_text.py), and never with
remote code: a model type transformers does not know is refused. The tower's transformers config is kept in
AlignConfig.hf_image_config, so a saved model is rebuilt from its own folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import Stage, VisionConfig
from .efficientnet import VisionOutput
from .hf_text import set_checkpointing, transformers_module
from .indices import take_indices

IMAGE_POOLINGS = ("pooler", "mean")


def vision_config_from_hf(hf_config: dict[str, Any], image_size: int) -> VisionConfig:
    """The VisionConfig the rest of the package reads (input channels, image size) for a transformers vision
    config. Its one stride-2 stage only keeps the input checks' smallest side low: the tower runs its own layers."""
    channels = hf_config.get("num_channels", 3)
    # Towers with position embeddings over patches (ViT, Dinov2, SigLIP) take their config's image size; a
    # ConvNet's config size is nominal, and its input is what the processor makes.
    size = hf_config.get("image_size") if not hf_config.get("hidden_sizes") else None
    size = size or image_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    return VisionConfig(
        image_size=int(size),
        in_chans=int(channels),
        stages=(Stage(kernel=3, stride=1, expand=1, in_ch=32, out_ch=32, repeats=1),),
        drop_path_rate=float(hf_config.get("drop_path_rate") or 0.0),
    )


@dataclass
class HFImageIntermediates:
    """The tower's hidden states (transformers' `output_hidden_states`: the embeddings' output, then each layer's
    or stage's) and its pooled (B, C) features."""

    hidden_states: list[torch.Tensor]
    pooled: torch.Tensor


class HFImageTower(nn.Module):
    """A transformers vision AutoModel built from its config dict (random weights; from_pretrained or the trainer
    fills them): `forward(pixel_values)` returns a VisionOutput whose pooler_output is (B, num_features), as
    EfficientNet's does."""

    def __init__(self, hf_config: dict[str, Any], pooling: str = "pooler") -> None:
        super().__init__()
        if pooling not in IMAGE_POOLINGS:
            raise ValueError(f"an hf image tower pools by one of {IMAGE_POOLINGS}, got {pooling!r}")
        transformers = transformers_module()
        fields = dict(hf_config)
        model_type = fields.pop("model_type", None)
        if not model_type:
            raise ValueError("AlignConfig.hf_image_config has no model_type")
        self.encoder = transformers.AutoModel.from_config(transformers.AutoConfig.for_model(model_type, **fields))
        self.pooling = pooling
        self.num_features = num_features(self.encoder.config)
        self.stage_names = _stage_names(self.encoder.config)

    @property
    def num_positions(self) -> int:
        """Entries of the tower's hidden states: the embeddings' output, then one per layer or stage."""
        return len(self.stage_names) + 1

    def set_drop_path_rate(self, rate: float) -> None:
        """The tower's drop-path is part of its transformers config: only its own rate is accepted."""
        own = float(getattr(self.encoder.config, "drop_path_rate", 0.0) or 0.0)
        if rate != own:
            raise ValueError(f"a transformers image tower keeps its own drop-path rate ({own}); got {rate}")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_checkpointing(self.encoder, enable)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The tower's own transformers initialisation."""
        self.encoder.init_weights()

    def pool_output(self, out: Any) -> torch.Tensor:
        """The transformers output -> (B, C) features, by the tower's pooling."""
        if self.pooling == "pooler":
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                raise ValueError(f"{type(self.encoder).__name__} gives no pooler_output: use image pooling 'mean'")
            return pooled.flatten(1)  # (B, C): ResNet-like poolers keep (B, C, 1, 1)
        hidden = out.last_hidden_state
        return hidden.mean(dim=(2, 3)) if hidden.ndim == 4 else hidden.mean(dim=1)  # (B, C, h, w) or (B, T, C)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> VisionOutput:
        """As EfficientNet's: the last hidden state, the pooled (B, C) features by this tower's pooling, and
        with `output_hidden_states` the transformers hidden states."""
        out = self.encoder(pixel_values=pixel_values, output_hidden_states=output_hidden_states)
        hidden = tuple(out.hidden_states) if output_hidden_states else None
        return VisionOutput(out.last_hidden_state, self.pool_output(out), hidden)

    def intermediates(self, pixel_values: torch.Tensor, indices: list[int] | None = None) -> HFImageIntermediates:
        """Hidden states at `indices` (positions, as `num_positions`; None: all) and the pooled features."""
        out = self.encoder(pixel_values=pixel_values, output_hidden_states=True)
        wanted = sorted(take_indices(indices, len(out.hidden_states), "image hidden-state"))
        return HFImageIntermediates([out.hidden_states[p] for p in wanted], self.pool_output(out))


def num_features(config: Any) -> int:
    """The width of the tower's last hidden state: `hidden_sizes[-1]` for ConvNets, else `hidden_size`."""
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    for name in ("hidden_size", "hidden_dim", "embed_dim"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ValueError(f"cannot tell the feature width of a {config.model_type} image tower")


def _stage_names(config: Any) -> list[str]:
    """One name per hidden state after the embeddings: `stage i` for ConvNets (`depths`), else `layer i`."""
    depths = getattr(config, "depths", None)
    if depths:
        return [f"stage {i}" for i in range(len(depths))]
    return [f"layer {i}" for i in range(int(config.num_hidden_layers))]
