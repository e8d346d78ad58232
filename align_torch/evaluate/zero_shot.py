"""Zero-shot classification: class names and prompt templates -> a classifier; images -> class probabilities.

The classifier follows the CLIP and ALIGN papers: for each class, embed every template filled with the class
name, L2-normalise, average, and normalise the average again. Scores are cosine similarities divided by the
model's learned temperature, exactly as AlignModel's logits, so with one template ("none") the probabilities
are the model's own `logits_per_image.softmax(-1)`.

    classifier = build_classifier(model, processor, ["cat", "dog"], "imagenet")
    result = classify(model, classifier, processor(images=images)["pixel_values"])
    result.ranked(["cat", "dog"])  # per image: [Prediction(label, prob, logit), ...] best first
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..defaults import TEMPLATES, TEXT_BATCH
from ..inference.embed import embed_texts, eval_mode
from ..model.align import AlignModel
from ..preprocess.processor import AlignProcessor
from ..preprocess.templates import fill, get_templates


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str):
        raise TypeError("class_names must be a list of strings, not one string")
    names = list(class_names)
    if not names:
        raise ValueError("class_names is empty; pass at least one class name")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"every class name must be a non-empty string, got {name!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"class names must be distinct; repeated: {duplicates}")
    return names


@torch.no_grad()
def build_classifier(
    model: AlignModel,
    processor: AlignProcessor,
    class_names: Sequence[str],
    templates: str | Sequence[str] = TEMPLATES,
    *,
    batch_size: int = TEXT_BATCH,
    progress: bool = False,
    embed: Callable[[list[str]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(num_classes, projection_dim) L2-normalised class embeddings on the model's device.

    `templates` is a set name ("imagenet", "simple", "none"; see align_torch.preprocess.templates) or a list of
    strings with one `{}` each. Row c is normalise(mean_t normalise(embed(template_t with class c))).
    `embed` maps the prompts to (N, P) normalised embeddings (default: embed_texts with this model; the
    evaluation protocols pass one that splits the prompts over torchrun ranks).
    """
    names = _check_class_names(class_names)
    templates = get_templates(templates)
    prompts = [prompt for name in names for prompt in fill(templates, name)]  # class-major: C * T prompts
    if embed is None:
        embeds = embed_texts(model, processor.tokenizer, prompts, batch_size=batch_size, progress=progress)
    else:
        embeds = embed(prompts)  # (C*T, P)
    embeds = embeds.view(len(names), len(templates), -1).mean(dim=1)  # (C, P)
    device = next(model.parameters()).device
    return F.normalize(embeds, dim=-1).to(device)


class Prediction(NamedTuple):
    """One class for one image."""

    label: str
    prob: float
    logit: float


@dataclass
class ZeroShotResult:
    """Scores of B images against C classes."""

    logits: torch.Tensor  # (B, C): cosine similarity / temperature
    probs: torch.Tensor  # (B, C): softmax over the classes

    @property
    def top1(self) -> torch.Tensor:
        """(B,) index of the most likely class per image."""
        return self.logits.argmax(dim=-1)

    def ranked(self, class_names: Sequence[str], k: int | None = None) -> list[list[Prediction]]:
        """Per image, the k (default all) most likely classes, best first."""
        num_classes = self.probs.shape[1]
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        k = num_classes if k is None else min(k, num_classes)
        probs, logits = self.probs.float().cpu(), self.logits.float().cpu()
        order = torch.topk(probs, k, dim=-1).indices  # (B, k)
        return [
            [Prediction(class_names[c], float(probs[b, c]), float(logits[b, c])) for c in row.tolist()]
            for b, row in enumerate(order)
        ]


@torch.no_grad()
def classify_embeddings(model: AlignModel, classifier: torch.Tensor, image_embeds: torch.Tensor) -> ZeroShotResult:
    """Scores from (B, P) L2-normalised image embeddings (e.g. from embed_images) and a build_classifier output."""
    if image_embeds.ndim != 2 or classifier.ndim != 2 or image_embeds.shape[1] != classifier.shape[1]:
        raise ValueError(
            f"image embeddings {tuple(image_embeds.shape)} and classifier {tuple(classifier.shape)} must be "
            "(B, P) and (C, P) with the same P"
        )
    image_embeds = image_embeds.to(device=classifier.device, dtype=classifier.dtype)
    logits = image_embeds @ classifier.t() / model.temperature.to(classifier.device)  # (B, C)
    return ZeroShotResult(logits=logits, probs=logits.softmax(dim=-1))


@torch.no_grad()
def classify(model: AlignModel, classifier: torch.Tensor, pixel_values: torch.Tensor) -> ZeroShotResult:
    """Classify (B, 3, H, W) processed images against a build_classifier output, in eval mode."""
    p = next(model.parameters())
    with eval_mode(model):
        image_embeds = model.encode_image(pixel_values.to(device=p.device, dtype=p.dtype), normalize=True)  # (B, P)
    return classify_embeddings(model, classifier, image_embeds)
