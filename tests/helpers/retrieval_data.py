"""Embeddings folders for the retrieval tests, written with numpy and pyarrow alone (clip-retrieval's layout)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(
    count: int, dim: int, clusters: int, spread: float, seed: int, chunk: int = 20_000
) -> Iterator[np.ndarray]:
    """Normalised float32 vectors around `clusters` random centres, `chunk` rows at a time (never all at once):
    each row is its centre plus isotropic noise of norm `spread`, normalised."""
    rng = np.random.default_rng(seed)
    centres = normalise(rng.standard_normal((clusters, dim), dtype=np.float32))
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        noise = normalise(rng.standard_normal((n, dim), dtype=np.float32)) * np.float32(spread)
        yield normalise(centres[rng.integers(0, clusters, n)] + noise)


def write_folder(
    root: Path,
    parts: list[np.ndarray],
    dtype: str = "float16",
    metadata: list[dict[str, list]] | None = None,
    text_parts: list[np.ndarray] | None = None,
) -> Path:
    """img_emb/img_emb_{i}.npy (and text_emb/, metadata/ when given) for each part, as clip-retrieval writes them."""
    (root / "img_emb").mkdir(parents=True)
    for i, part in enumerate(parts):
        np.save(root / "img_emb" / f"img_emb_{i}.npy", part.astype(dtype))
    if text_parts is not None:
        (root / "text_emb").mkdir()
        for i, part in enumerate(text_parts):
            np.save(root / "text_emb" / f"text_emb_{i}.npy", part.astype(dtype))
    if metadata is not None:
        (root / "metadata").mkdir()
        for i, columns in enumerate(metadata):
            pq.write_table(pa.table(columns), root / "metadata" / f"metadata_{i}.parquet")
    return root


PHOTOS = {
    "chelsea": "a cat with orange fur",
    "coffee": "a cup of coffee on a saucer",
    "astronaut": "an astronaut in a space suit",
    "rocket": "a red rocket on the launch pad",
    "camera": "a man with a camera",
    "horse": "a horse",
}


def photo_collection(root: Path, model_dir: Path) -> Path:
    """Six real photos embedded with the tiny model into an embeddings folder of two parts, with captions, caption
    embeddings, metadata and a description naming the model."""
    import json

    import PIL.Image
    import skimage.data

    from align_torch import AlignModel, AlignProcessor
    from align_torch.inference.embed import embed_images, embed_texts

    images = root / "images"
    images.mkdir(parents=True)
    paths = []
    for name in PHOTOS:
        pixels = getattr(skimage.data, name)()
        image = PIL.Image.fromarray(pixels if pixels.dtype == np.uint8 else (pixels * 255).astype(np.uint8)).convert(
            "RGB"
        )
        paths.append(images / f"{name}.jpg")
        image.save(paths[-1], quality=90)
    model, processor = AlignModel.from_pretrained(model_dir), AlignProcessor.from_pretrained(model_dir)
    vectors = embed_images(model, processor.image_processor, paths).vectors.numpy()
    texts = embed_texts(model, processor.tokenizer, list(PHOTOS.values())).numpy()
    cut = 4
    folder = write_folder(
        root / "emb",
        [vectors[:cut], vectors[cut:]],
        metadata=[
            {"image_path": [str(p) for p in paths[:cut]], "caption": list(PHOTOS.values())[:cut]},
            {"image_path": [str(p) for p in paths[cut:]], "caption": list(PHOTOS.values())[cut:]},
        ],
        text_parts=[texts[:cut], texts[cut:]],
    )
    (folder / "embeddings.json").write_text(json.dumps({"model": str(model_dir), "dim": int(vectors.shape[1])}))
    return folder
