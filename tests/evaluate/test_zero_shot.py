"""Zero-shot classification: templates, the averaged class embeddings, and scores equal to the model's logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from align_torch import AlignModel, AlignProcessor
from align_torch.evaluate.zero_shot import Prediction, build_classifier, classify, classify_embeddings
from align_torch.inference.embed import embed_texts
from align_torch.preprocess.templates import IMAGENET_TEMPLATES, TEMPLATE_SETS, fill, get_templates
from tests.helpers.job_data import photo

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny(model_dir):
    return AlignModel.from_pretrained(model_dir), AlignProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def pixels(tiny):
    _, processor = tiny
    return processor(images=[photo(n) for n in ("chelsea", "coffee", "astronaut")])["pixel_values"]


def test_template_sets():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert IMAGENET_TEMPLATES[0] == "a bad photo of a {}." and IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."
    assert get_templates("simple") == ("a photo of a {}.",) and get_templates("none") == ("{}",)
    assert set(TEMPLATE_SETS) == {"imagenet", "simple", "none"}
    # Braces in a class name are kept as they are (no str.format).
    assert fill(["a {} here."], "set {x}") == ["a set {x} here."]


@pytest.mark.parametrize(
    "templates, match",
    [("fancy", "unknown template set"), ([], "empty"), (["no slot"], "exactly one"), (["{} and {}"], "exactly one")],
)
def test_bad_templates_are_refused(templates, match):
    with pytest.raises(ValueError, match=match):
        get_templates(templates)


def test_classifier_is_the_renormalised_mean_of_normalised_prompt_embeddings(tiny):
    model, processor = tiny
    names, templates = ["cat", "coffee cup", "rocket"], ["a photo of a {}.", "art of the {}.", "itap of my {}."]
    classifier = build_classifier(model, processor, names, templates, batch_size=4)  # batches cut across classes
    assert classifier.shape == (3, model.config.projection_dim)
    torch.testing.assert_close(classifier.norm(dim=-1), torch.ones(3))
    for c, name in enumerate(names):
        # Reference: padded to 64 tokens as the model card does, one class at a time.
        with torch.no_grad():
            feats = model.get_text_features(**processor(text=fill(templates, name)))  # (T, P)
        expected = F.normalize(F.normalize(feats, dim=-1).mean(0), dim=0)
        torch.testing.assert_close(classifier[c], expected, rtol=0, atol=TOL)


def test_with_labels_as_written_the_probabilities_are_the_models(tiny, pixels):
    model, processor = tiny
    labels = ["an image of a cat", "an image of a dog", "a cup of coffee"]
    result = classify(model, build_classifier(model, processor, labels, "none"), pixels)
    with torch.no_grad():
        out = model(**processor(text=labels), pixel_values=pixels)
    torch.testing.assert_close(result.logits, out.logits_per_image, rtol=0, atol=TOL)
    torch.testing.assert_close(result.probs, out.logits_per_image.softmax(dim=1), rtol=0, atol=TOL)
    assert model.temperature.item() == pytest.approx(0.0734)  # the scores use the learned temperature
    assert (result.logits[0] - result.logits[1]).abs().min() > 0.1  # the photos are told apart


def test_ranked_orders_by_probability(tiny, pixels):
    model, processor = tiny
    labels = ["cat", "dog", "cup"]
    result = classify(model, build_classifier(model, processor, labels, "imagenet"), pixels)
    ranked = result.ranked(labels)
    assert len(ranked) == 3 and all(len(r) == 3 for r in ranked)
    for b, preds in enumerate(ranked):
        assert all(isinstance(p, Prediction) for p in preds)
        assert [p.prob for p in preds] == sorted((p.prob for p in preds), reverse=True)
        assert preds[0].label == labels[result.top1[b]]
        assert sum(p.prob for p in preds) == pytest.approx(1.0, abs=1e-6)
        assert preds[0].logit == pytest.approx(result.logits[b].max().item())
    assert [len(r) for r in result.ranked(labels, k=2)] == [2, 2, 2]
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        result.ranked(labels[:2])


def test_classify_leaves_a_training_model_as_it_was(model_dir, pixels):
    model = AlignModel.from_pretrained(model_dir).train()
    processor = AlignProcessor.from_pretrained(model_dir)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    classifier = build_classifier(model, processor, ["cat", "dog"], "simple")
    first = classify(model, classifier, pixels)
    second = classify(model, classifier, pixels)
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    torch.testing.assert_close(first.logits, second.logits, rtol=0, atol=0)  # no dropout: eval mode inside


def test_bad_class_names_and_shapes_are_refused(tiny):
    model, processor = tiny
    for names, match in [([], "empty"), (["cat", "cat"], "distinct"), (["cat", " "], "non-empty")]:
        with pytest.raises(ValueError, match=match):
            build_classifier(model, processor, names)
    with pytest.raises(TypeError, match="not one string"):
        build_classifier(model, processor, "cat")
    classifier = build_classifier(model, processor, ["cat", "dog"])
    with pytest.raises(ValueError, match="same P"):
        classify_embeddings(model, classifier, torch.randn(2, 7))


def test_embed_texts_matches_text_features_and_is_normalised(tiny):
    model, processor = tiny
    texts = ["a cat", "a much longer sentence about a dog on a sofa", ""]
    got = embed_texts(model, processor.tokenizer, texts, batch_size=2)
    with torch.no_grad():
        expected = F.normalize(model.get_text_features(**processor(text=texts)), dim=-1)
    torch.testing.assert_close(got, expected, rtol=0, atol=TOL)


def test_labels_with_an_article_are_not_given_a_second_one():
    """`--labels "a cat"` (the README's example): the label's article replaces the template's, a determiner or
    adjective before the label drops it, and a label without an article is filled in as before."""
    assert fill(["a photo of a {}.", "a photo of the {}.", "a {} in a video game.", "{}"], "a cat") == [
        "a photo of a cat.",
        "a photo of a cat.",
        "a cat in a video game.",
        "a cat",
    ]
    assert fill(["a photo of a {}."], "an apple") == ["a photo of an apple."]
    assert fill(["a photo of my {}.", "a photo of a clean {}.", "a photo of {}."], "The cat") == [
        "a photo of my cat.",
        "a photo of a clean cat.",
        "a photo of The cat.",
    ]
    assert fill(["a photo of a {}."], "cat") == ["a photo of a cat."]
    assert fill(["a photo of a {}."], "a") == ["a photo of a a."]  # a bare word, not an article before a noun
    for prompt in fill(IMAGENET_TEMPLATES, "a cat"):
        words = prompt.lower().split()
        assert not any(
            w in ("a", "an", "the") and v in ("a", "an", "the") for w, v in zip(words, words[1:], strict=False)
        )
