"""The three examples of the kakaobrain/align-base model card run on align_torch with only the import line
changed, and give transformers' numbers.

`model_card` below is the card's code, verbatim except that the checkpoint is a local full-size folder
(config.json + pytorch_model.bin + align-base's processor files, random weights) and the photo is passed in
instead of downloaded. It runs once with transformers' classes and once with align_torch's.
"""

from __future__ import annotations

import copy

import PIL.Image
import pytest
import skimage.data as skimage_data
import torch
import torch.nn.functional as F
import transformers
from matplotlib import cbook

from tests.helpers.checkpoints import write_hf_checkpoint
from tests.helpers.proc_data import ALIGN_BASE_PREPROCESSOR

pytestmark = pytest.mark.slow

TOL = 1e-5


def photos() -> list[PIL.Image.Image]:
    """A cat, a portrait and a cup, as PIL images the way Image.open gives them."""
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = PIL.Image.open(f)
        hopper.load()
    return [PIL.Image.fromarray(skimage_data.chelsea()), hopper, PIL.Image.fromarray(skimage_data.coffee())]


def model_card(AlignProcessor, AlignModel, checkpoint, images) -> dict[str, torch.Tensor]:  # noqa: N803
    """The model card's three examples; returns every tensor they compute."""
    processor = AlignProcessor.from_pretrained(checkpoint)
    model = AlignModel.from_pretrained(checkpoint)

    # Zero-shot image classification.
    image = images[0]
    candidate_labels = ["an image of a cat", "an image of a dog"]
    inputs = processor(text=candidate_labels, images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    logits_per_image = outputs.logits_per_image
    probs = logits_per_image.softmax(dim=1)

    # Joint text and image embeddings.
    image = images[1]
    text = "an image of a cat"
    inputs = processor(text=text, images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    image_embeds = outputs.image_embeds
    text_embeds = outputs.text_embeds

    # Image-only and text-only embeddings.
    image = images[2]
    inputs = processor(images=image, return_tensors="pt")
    image_features = model.get_image_features(pixel_values=inputs["pixel_values"])
    inputs = processor(text=text, return_tensors="pt")
    text_features = model.get_text_features(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], token_type_ids=inputs["token_type_ids"]
    )

    # transformers 5 returns a BaseModelOutputWithPooling from get_*_features (the features are its
    # pooler_output); transformers 4 and align_torch return the tensor.
    image_features = getattr(image_features, "pooler_output", image_features)
    text_features = getattr(text_features, "pooler_output", text_features)
    return {
        "logits_per_image": logits_per_image,
        "probs": probs,
        "image_embeds": image_embeds,
        "text_embeds": text_embeds,
        "image_features": image_features.detach(),
        "text_features": text_features.detach(),
    }


@pytest.fixture(scope="module")
def card_checkpoint(hf_full, hf_full_dir, tmp_path_factory):
    """hf_full with BatchNorm statistics measured on these photos at 289 px, saved as align-base ships (.bin +
    processor files).

    hf_full's statistics were measured on synthetic images at 160 px and then perturbed (hf_reference.
    randomize_): with them the photos' embeddings differ from transformers' by float rounding of 1.5e-5, above
    this test's 1e-5. Statistics measured on the inputs, as a trained model's fit its data, keep every weight
    random and the comparison at 1e-5.
    """
    model = copy.deepcopy(hf_full)
    processor = transformers.AlignProcessor.from_pretrained(hf_full_dir)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: after one batch, exactly that batch's statistics
        bn.train()
    with torch.no_grad():
        model.vision_model(pixel_values=processor(images=photos(), return_tensors="pt")["pixel_values"])
    model.eval()
    folder = tmp_path_factory.mktemp("model_card") / "align-base-random"
    return write_hf_checkpoint(folder, model, fmt="bin", preprocessor=ALIGN_BASE_PREPROCESSOR)


def test_model_card_examples_match_transformers(card_checkpoint):
    import align_torch

    images = photos()
    ref = model_card(transformers.AlignProcessor, transformers.AlignModel, card_checkpoint, images)
    ours = model_card(align_torch.AlignProcessor, align_torch.AlignModel, card_checkpoint, images)

    assert ref["probs"].shape == (1, 2) and ref["image_features"].shape == (1, 640)
    for name, expected in ref.items():
        got = ours[name]
        assert isinstance(got, torch.Tensor), f"{name} is a {type(got).__name__}, not a tensor"
        assert got.shape == expected.shape, f"{name}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
        err = (got - expected).abs().max().item()
        assert err <= TOL, f"{name}: max abs difference {err:.3g} from transformers (tolerance {TOL})"
    # The comparison means something: different photos give different embeddings, and no tie.
    cosine = ours["image_embeds"][0] @ F.normalize(ours["image_features"][0], dim=0)
    assert cosine < 0.99, f"portrait and cup embed alike (cosine {cosine:.4f}): the check would miss pixel errors"
    assert abs(ours["probs"][0, 0] - ours["probs"][0, 1]) > 1e-3
