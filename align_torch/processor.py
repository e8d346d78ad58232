"""AlignProcessor: the tokenizer and the image processor of a checkpoint folder, called together.

`AlignProcessor.from_pretrained("kakaobrain/align-base")(text=..., images=...)` gives the inputs of
`AlignModel` as transformers' AlignProcessor does, from the same files (preprocessor_config.json,
tokenizer_config.json, special_tokens_map.json, vocab.txt or tokenizer.json).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .hub import resolve_model_dir
from .image_processing import AlignImageProcessor, BatchFeature, ImageInput
from .tokenizer import AlignTokenizer

PREPROCESSOR_CONFIG = "preprocessor_config.json"


class AlignProcessor:
    """Texts → input_ids/attention_mask/token_type_ids (int64); images → pixel_values (float32, N×3×H×W)."""

    def __init__(self, image_processor: AlignImageProcessor, tokenizer: AlignTokenizer) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> AlignProcessor:
        """Load from a local folder or a Hub repo id (only the config and vocab files are downloaded)."""
        folder = resolve_model_dir(
            name_or_path, weights=False, revision=revision, cache_dir=None if cache_dir is None else str(cache_dir)
        )
        config_path = folder / PREPROCESSOR_CONFIG
        if not config_path.is_file():
            raise FileNotFoundError(f"{folder} has no {PREPROCESSOR_CONFIG}; is it an ALIGN checkpoint?")
        image_processor = AlignImageProcessor.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        return cls(image_processor, AlignTokenizer.from_pretrained(folder))

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: ImageInput | Sequence[ImageInput] | None = None,
        *,
        padding: bool | str = "max_length",
        truncation: bool | str = True,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Tokenize `text` and/or preprocess `images` into one BatchFeature, ready for `model(**inputs)`.

        Defaults pad and truncate every text to 64 tokens (transformers pads to 64 but does not truncate
        unless `truncation=True`). `padding=True` pads to the longest text; see AlignTokenizer.__call__.
        """
        if text is None and images is None:
            raise ValueError("pass text, images or both")
        out = BatchFeature()
        if text is not None:
            out.update(
                self.tokenizer(
                    text, padding=padding, truncation=truncation, max_length=max_length, return_tensors=return_tensors
                )
            )
        if images is not None:
            out.update(self.image_processor(images, return_tensors=return_tensors))
        return out

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Shortcut for `self.tokenizer.decode`."""
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch, skip_special_tokens: bool = False) -> list[str]:
        """Shortcut for `self.tokenizer.batch_decode`."""
        return self.tokenizer.batch_decode(batch, skip_special_tokens=skip_special_tokens)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the processor files into `folder` (created if needed; a model folder keeps its other files).

        Each file is written in a temporary folder beside it and moved into place with os.replace, so a
        crash never leaves a half-written config or vocab for the next from_pretrained to read.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {PREPROCESSOR_CONFIG: json.dumps(self.image_processor.to_dict(), indent=2) + "\n"}
        files |= self.tokenizer.to_files()
        staging = Path(tempfile.mkdtemp(prefix=".processor-", dir=folder))
        try:
            for name, contents in files.items():
                (staging / name).write_text(contents, encoding="utf-8")
            for name in files:
                os.replace(staging / name, folder / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    def __repr__(self) -> str:
        return f"AlignProcessor(image_processor={self.image_processor!r}, tokenizer_vocab={self.tokenizer.vocab_size})"
