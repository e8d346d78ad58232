"""AlignProcessor: the tokenizer and the image processor of a checkpoint folder, called together.

`AlignProcessor.from_pretrained("kakaobrain/align-base")(text=..., images=...)` gives the inputs of
`AlignModel` as transformers' AlignProcessor does, from the same files. Two layouts are read and written:
transformers 4's (preprocessor_config.json, tokenizer_config.json, special_tokens_map.json, vocab.txt or
tokenizer.json; what kakaobrain/align-base ships) and transformers 5's (processor_config.json with the image
processor settings under "image_processor", tokenizer_config.json, tokenizer.json).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoint.config_files import field_error, read_json_object
from ..checkpoint.hub import resolve_model_dir
from .image_processing import AlignImageProcessor, BatchFeature, ImageInput
from .tokenizer import AlignTokenizer

PREPROCESSOR_CONFIG = "preprocessor_config.json"
PROCESSOR_CONFIG = "processor_config.json"  # transformers 5
LAYOUTS = ("transformers4", "transformers5")


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
        return cls(read_image_processor(folder), AlignTokenizer.from_pretrained(folder))

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: ImageInput | Sequence[ImageInput] | None = None,
        *,
        padding: bool | str = "max_length",
        truncation: bool | str = True,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        **image_options: Any,
    ) -> BatchFeature:
        """Tokenize `text` and/or preprocess `images` into one BatchFeature, ready for `model(**inputs)`.

        Defaults pad and truncate every text to 64 tokens (transformers pads to 64 but does not truncate
        unless `truncation=True`). `padding=True` pads to the longest text; see AlignTokenizer.__call__.
        `return_tensors`: "pt" (default), "np", or None (numpy pixels, lists of ids). `image_options` are
        transformers' per-call image processor options (`do_rescale=False`, `size=`, ...; see
        AlignImageProcessor.__call__); an option it does not take is a TypeError naming it.
        """
        if text is None and images is None:
            raise ValueError("pass text, images or both")
        image_processor = self.image_processor.with_options(**image_options) if image_options else self.image_processor
        out = BatchFeature()
        if text is not None:
            out.update(
                self.tokenizer(
                    text, padding=padding, truncation=truncation, max_length=max_length, return_tensors=return_tensors
                )
            )
        if images is not None:
            out.update(image_processor(images, return_tensors=return_tensors))
        return out

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Shortcut for `self.tokenizer.decode`."""
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch, skip_special_tokens: bool = False) -> list[str]:
        """Shortcut for `self.tokenizer.batch_decode`."""
        return self.tokenizer.batch_decode(batch, skip_special_tokens=skip_special_tokens)

    def save_pretrained(self, folder: str | os.PathLike, layout: str = "transformers4") -> Path:
        """Write the processor files into `folder` (created if needed; a model folder keeps its other files).

        layout "transformers4" (default; read by transformers 4 and 5): preprocessor_config.json and the
        tokenizer's vocab files. "transformers5": processor_config.json + tokenizer.json + tokenizer_config.json,
        as transformers 5's AlignProcessor.save_pretrained writes them. Each file is written in a temporary
        folder beside it and moved into place with os.replace, so a crash never leaves a half-written file.
        """
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if layout == "transformers4":
            files = {PREPROCESSOR_CONFIG: _json(self.image_processor.to_dict())}
            files |= self.tokenizer.to_files()
        else:
            files = {
                PROCESSOR_CONFIG: _json(
                    {"image_processor": self.image_processor.to_dict()} | {"processor_class": "AlignProcessor"}
                )
            }
            tokenizer_files = self.tokenizer.to_files(with_tokenizer_json=True)
            files |= {name: tokenizer_files[name] for name in ("tokenizer_config.json", "tokenizer.json")}
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


def read_image_processor(folder: Path) -> AlignImageProcessor:
    """The image processor of a checkpoint folder: preprocessor_config.json (transformers 4), else the
    "image_processor" object of processor_config.json (transformers 5). A bad field names the file."""
    path = folder / PREPROCESSOR_CONFIG
    if path.is_file():
        config = read_json_object(path)
    elif (folder / PROCESSOR_CONFIG).is_file():
        path = folder / PROCESSOR_CONFIG
        config = read_json_object(path).get("image_processor")
        if not isinstance(config, dict):
            raise field_error(path, ValueError("'image_processor' must be a JSON object of image processor settings"))
    else:
        raise FileNotFoundError(
            f"{folder} has neither {PREPROCESSOR_CONFIG} nor {PROCESSOR_CONFIG}; is it an ALIGN checkpoint?"
        )
    try:
        return AlignImageProcessor.from_dict(config)
    except (TypeError, ValueError) as e:
        raise field_error(path, e) from None


def _json(value: dict) -> str:
    return json.dumps(value, indent=2) + "\n"
