"""A model stub for the evaluation protocols: images are solid colours whose colour encodes an index, captions
are looked up by text, and each maps to a chosen embedding, so rankings (and recalls) are known by
construction while the real image reading, processor, sharding and gathering run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from align_torch.preprocess.image_processing import AlignImageProcessor

# A small eval processor: resize + centre crop keep a solid colour exact.
PROCESSOR_CONFIG = {
    "do_resize": True,
    "size": {"height": 12, "width": 12},
    "resample": 2,
    "do_center_crop": True,
    "crop_size": {"height": 8, "width": 8},
    "do_rescale": True,
    "rescale_factor": 1 / 127.5,
    "rescale_offset": True,
    "do_normalize": False,
}


def write_index_image(path: Path, index: int) -> Path:
    """A solid image whose red and green channels encode `index` (0 .. 65535)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 20), (index % 256, index // 256, 0)).save(path)
    return path


class StubModel(nn.Module):
    """encode_image reads the index back from the pixels and returns image_vectors[index]; encode_text returns
    text_vectors[id] for the id the StubTokenizer gave. Counts the rows it embeds (to check sharding)."""

    def __init__(self, image_vectors: torch.Tensor, text_vectors: torch.Tensor) -> None:
        super().__init__()
        self.config = SimpleNamespace(projection_dim=image_vectors.shape[1])
        self.anchor = nn.Parameter(torch.zeros(()))
        self.temperature = torch.tensor(1.0)
        self.image_vectors, self.text_vectors = image_vectors.float(), text_vectors.float()
        self.images_seen = self.texts_seen = 0

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        level = torch.round((pixels[:, :2].mean(dim=(2, 3)) + 1) * 127.5).long()  # (B, 2): red, green
        self.images_seen += len(pixels)
        x = self.image_vectors[level[:, 0] + 256 * level[:, 1]]
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, input_ids, attention_mask=None, token_type_ids=None, normalize=False) -> torch.Tensor:
        self.texts_seen += len(input_ids)
        x = self.text_vectors[input_ids[:, 0]]
        return F.normalize(x, dim=-1) if normalize else x


class StubTokenizer:
    """Text -> its row in the text table, as a (B, 1) id tensor."""

    def __init__(self, texts: list[str]) -> None:
        self.ids = {t: i for i, t in enumerate(texts)}

    def __call__(self, texts, **_):
        return {"input_ids": torch.tensor([[self.ids[t]] for t in texts])}


def stub_processor(texts: list[str]) -> SimpleNamespace:
    return SimpleNamespace(
        image_processor=AlignImageProcessor.from_dict(PROCESSOR_CONFIG), tokenizer=StubTokenizer(texts)
    )


def caption(i: int, j: int) -> str:
    return f"image {i} caption {j}"


def write_karpathy(root: Path, num_test: int, extra_caption_of: int | None = None) -> Path:
    """A dataset_coco.json-style file: `num_test` test images (index i, 5 captions each, even ones under a
    `val2014` filepath as COCO's), then 3 train and 2 val images that the test split must leave out. With
    `extra_caption_of`, that test image has a 6th caption (as a few COCO images do)."""
    entries = []
    for i in range(num_test + 5):
        split = "test" if i < num_test else ("train" if i < num_test + 3 else "val")
        folder = "val2014" if i % 2 == 0 else ""
        write_index_image(root / folder / f"{i:05d}.png", i)
        n = 6 if i == extra_caption_of else 5
        entry = {"filename": f"{i:05d}.png", "split": split, "imgid": i, "sentences": []}
        entry["sentences"] = [{"raw": caption(i, j), "tokens": caption(i, j).split()} for j in range(n)]
        if folder:
            entry["filepath"] = folder
        entries.append(entry)
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path


def write_index_classes(root: Path, split: str, per_class: int, classes: list[str], start: int) -> dict[Path, int]:
    """root/split/<class>/*.png with indices from `start`; {path: index}."""
    out, index = {}, start
    for name in classes:
        for n in range(per_class):
            out[write_index_image(root / split / name / f"{n}.png", index)] = index
            index += 1
    return out
