"""Small random transformers vision encoders saved as tower folders (`--image-tower hf:FOLDER`), and a tiny model
folder with one in place of its image tower."""

from __future__ import annotations

import json
from pathlib import Path

VIT_SIZE = 32  # the ViT folder's own preprocessing: not the starting model's 64 px


def convnext_folder(folder: Path) -> Path:
    """A two-stage ConvNeXt without its own preprocessing (the starting model's is kept)."""
    import transformers

    config = transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
    transformers.ConvNextModel(config).save_pretrained(folder)
    return folder


def vit_folder(folder: Path) -> Path:
    """A two-layer ViT of 32 px images with a preprocessor_config.json (mean 0.5, pixels in [0, 1])."""
    import transformers

    config = transformers.ViTConfig(
        image_size=VIT_SIZE,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    transformers.ViTModel(config).save_pretrained(folder)
    processor = {"image_processor_type": "ViTImageProcessor", "size": {"height": VIT_SIZE, "width": VIT_SIZE}}
    (folder / "preprocessor_config.json").write_text(json.dumps({**processor, "image_mean": [0.5] * 3}))
    return folder


def hf_image_model(kind: str, model_dir: Path, root: Path) -> Path:
    """`model_dir` with the random `kind` ("convnext" or "vit") tower as its image tower, saved to root/model with
    the processor that fits it (what a run's final/ holds, without the minutes of a run)."""
    from align_torch import AlignModel, AlignProcessor
    from align_torch.checkpoint.weights import save_native
    from align_torch.train.image_tower import swap_image_tower

    tower = (convnext_folder if kind == "convnext" else vit_folder)(root / kind)
    model, processor = AlignModel.from_pretrained(model_dir), AlignProcessor.from_pretrained(model_dir)
    model, processor = swap_image_tower(model, f"hf:{tower}", processor)
    save_native(model.eval(), root / "model", processor_from=processor.save_pretrained(root / "processor"))
    return root / "model"
