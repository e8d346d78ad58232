"""Prompt templates for zero-shot classification: `{}` is replaced by the class name.

"imagenet" is the 80-template ensemble of the CLIP paper (Radford et al. 2021, used for ALIGN's zero-shot
ImageNet numbers as well); "simple" is the single prompt "a photo of a {}."; "none" uses the label as written,
for labels that are already sentences ("an image of a cat").

The default set of `zero-shot`, `eval` and fine-tuning evaluation is align_torch.defaults.TEMPLATES
("imagenet"), one default so a model gets the same zero-shot score from each.
"""

from __future__ import annotations

from collections.abc import Sequence

IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

NO_TEMPLATES: tuple[str, ...] = ("{}",)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "imagenet": IMAGENET_TEMPLATES,
    "simple": SIMPLE_TEMPLATES,
    "none": NO_TEMPLATES,
}


def get_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A template set by name ("imagenet", "simple", "none"), or a list of templates checked for one `{}` each."""
    if isinstance(templates, str):
        try:
            return TEMPLATE_SETS[templates]
        except KeyError:
            raise ValueError(
                f"unknown template set {templates!r}; choose from {sorted(TEMPLATE_SETS)} or pass a list of templates"
            ) from None
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates is empty; pass at least one template such as 'a photo of a {}.'")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"each template must be a string with exactly one '{{}}' for the class name, got {t!r}")
    return templates


ARTICLES = ("a", "an", "the")
# Words after which a whole noun phrase follows, article included ("a photo of {}." + "a cat").
_PHRASE_STARTS = frozenset({"of", "in", "on", "with", "for", "at", "from", "by", "to", "and", "or", "like"})


def fill(templates: Sequence[str], class_name: str) -> list[str]:
    """The prompts for one class: each template with `{}` replaced by `class_name`. A class name that starts
    with an article ("a cat") is not given a second one: its article replaces the template's ("a photo of the
    {}." -> "a photo of a cat."), and after another determiner or adjective it is dropped ("a photo of my cat.")."""
    # str.replace, not str.format: a class name or template may contain other braces.
    return [_fill_one(t, class_name) for t in templates]


def _fill_one(template: str, class_name: str) -> str:
    article, _, noun = class_name.partition(" ")
    before, after = template.split("{}", 1) if template.count("{}") == 1 else (None, None)
    if before is None or article.lower() not in ARTICLES or not noun.strip():
        return template.replace("{}", class_name)
    head, _, previous = before.rstrip().rpartition(" ")
    if not previous or not before.endswith(" ") or previous.lower() in _PHRASE_STARTS:
        return template.replace("{}", class_name)  # nothing, or a noun phrase's start, before the label
    if previous.lower() in ARTICLES:
        return f"{head}{' ' if head else ''}{class_name}{after}"
    return f"{before}{noun.lstrip()}{after}"
