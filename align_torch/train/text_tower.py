"""`finetune --text-tower hf:PATH_OR_ID`: put a pretrained transformers encoder in place of the model's text
tower, with a new text projection to the image embedding size; the image tower (and the temperature, and a
sigmoid model's bias) stay as they were. With `--lock-image` this is LiT on ALIGN's image tower.

The tokenizer comes from the tower's folder when it holds one (tokenizer.json or a WordPiece vocab.txt);
otherwise the starting model's is kept, if its ids fit the tower's vocabulary.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

from ..model.align import AlignModel
from ..model.config import AlignConfig
from ..model.hf_text import text_config_from_hf, tower_source, transformers_module
from ..preprocess.processor import AlignProcessor
from ..preprocess.tokenizer import AlignTokenizer

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def swap_text_tower(model: AlignModel, spec: str, processor: AlignProcessor) -> tuple[AlignModel, AlignProcessor]:
    """A new AlignModel with `model`'s image side and the encoder `spec` ("hf:PATH_OR_ID") as its text tower,
    and the processor that tokenizes for it."""
    source = tower_source(spec)
    encoder = load_tower(spec, source, "text")
    hf_config = encoder.config.to_dict()
    text = text_config_from_hf(hf_config, pooling=model.config.text.pooling)
    config = model.config.replace(text=text, text_tower=spec, hf_text_config=hf_config)
    swapped = rebuild_around(model, config, ("text_model.", "text_projection."))
    swapped.text_model.encoder.load_state_dict(encoder.state_dict())
    return swapped, AlignProcessor(processor.image_processor, _tokenizer(source, processor, text))


def load_tower(spec: str, source: str, side: str):
    """transformers' AutoModel of `source`, never with remote code (a folder whose config asks for code of its own
    is refused and nothing of it runs), its failures as one line naming the tower: a `.bin` that is not plain
    tensors (torch's weights-only unpickler refuses it, unrun), a missing or broken file."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")  # the refusal below says it all
        try:
            return transformers_module().AutoModel.from_pretrained(source, trust_remote_code=False)
        except pickle.UnpicklingError:
            raise ValueError(
                f"--{side}-tower {spec}: its weights file holds more than tensors (a pickle that would run code); "
                "refused unrun. Give the tower in safetensors"
            ) from None
        except (OSError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "trust_remote_code" in str(e):
                raise ValueError(
                    f"cannot load the {side} tower {source} without running its own code: {first}"
                ) from None
            raise ValueError(f"--{side}-tower {spec}: transformers could not load it ({first})") from None


def rebuild_around(model: AlignModel, config: AlignConfig, replaced: tuple[str, ...]) -> AlignModel:
    """A new AlignModel of `config` (same dtype, device and mode as `model`) holding `model`'s weights except
    those under the `replaced` prefixes (the swapped tower and its projection, left to the caller)."""
    swapped = AlignModel(config).to(dtype=model.temperature.dtype, device=model.temperature.device)
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith(replaced)}
    missing, unexpected = swapped.load_state_dict(kept, strict=False)
    stray = [k for k in missing if not k.startswith(replaced)]
    if stray or unexpected:
        raise ValueError(f"the other tower did not carry over to the new one: {sorted(stray + unexpected)}")
    return swapped.train(model.training)


def _tokenizer(source: str, processor: AlignProcessor, text) -> AlignTokenizer:
    folder = Path(source).expanduser()
    if folder.is_dir() and any((folder / name).is_file() for name in _TOKENIZER_FILES):
        tokenizer = AlignTokenizer.from_pretrained(folder)
        where = f"the tokenizer in {source}"
    else:
        tokenizer, where = processor.tokenizer, "the starting model's tokenizer"
    if tokenizer.vocab_size > text.vocab_size:
        raise ValueError(
            f"{where} has {tokenizer.vocab_size} tokens but the text tower {source} embeds only {text.vocab_size}: "
            "give the tower a folder with its own tokenizer"
        )
    return tokenizer
