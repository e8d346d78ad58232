"""`compare --texts` works on ALIGN: text sites are pooled so that they vary over the texts (the mean over real
tokens; [CLS] only at the tower's own output), a site that does not vary (or only by rounding) is left out with a
note naming it, and every site kept has CKA 1 against itself, on the starter model and at align-base size."""

from __future__ import annotations

import json

import pytest
import torch

from align_torch.inspect.cka import cka, varies
from align_torch.inspect.compare import cka_matrix
from tests.helpers.cli import run_cli
from tests.helpers.job_data import photo

TEXTS = ["a cat", "a cup of coffee", "an astronaut", "a rocket on its pad", "a dog in the snow", "red shapes"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_texts")
    (root / "photos").mkdir()
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        photo(name).resize((96, 72)).save(root / "photos" / f"{name}.png")
    (root / "texts.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return root


def _compare_with_itself(model, inputs, out, *extra) -> tuple[dict, str]:
    argv = ["compare", model, model, "--images", inputs / "photos", "--texts", inputs / "texts.txt", "--out", out]
    status, _, stderr = run_cli(*argv, "--device", "cpu", *extra)
    assert status == 0, stderr
    return json.loads((out / "cka.json").read_text()), stderr


def _assert_diagonal_of_one(report: dict) -> None:
    for tower in ("image", "text"):
        m = report[tower]
        assert m["sites_a"] == m["sites_b"]
        assert [m["cka"][i][i] for i in range(len(m["sites_a"]))] == pytest.approx([1.0] * len(m["sites_a"]), abs=1e-6)


def test_compare_texts_on_the_starter_model(tmp_path, inputs):
    starter = tmp_path / "starter"
    assert run_cli("init", starter)[0] == 0
    report, stderr = _compare_with_itself(starter, inputs, tmp_path / "cka")
    _assert_diagonal_of_one(report)
    text = report["text"]
    # The embeddings and every layer vary over the texts once averaged over the real tokens: all kept.
    assert text["sites_a"][0] == "text_model.embeddings" and text["sites_a"][-1] == "text_projection"
    assert text["constant_sites_a"] == [] and "note:" not in stderr


def test_a_constant_site_is_left_out_and_named(tmp_path):
    torch.manual_seed(0)
    moving = torch.randn(6, 8)
    same = torch.randn(1, 8).expand(6, 8)
    rounding = same + 1e-7 * torch.randn(6, 8)  # what [CLS] at the embeddings gave at align-base size
    assert varies(moving) and not varies(same) and not varies(rounding)
    with pytest.raises(ValueError, match="constant site"):
        cka(rounding, rounding)
    m = cka_matrix({"const": same, "noise": rounding, "moving": moving}, {"const": same, "moving": moving})
    assert m.sites_a == m.sites_b == ["moving"] and m.diagonal() == {"moving": pytest.approx(1.0)}
    assert m.constant_a == ["const", "noise"] and m.constant_b == ["const"]


def test_compare_names_each_constant_site(tmp_path, inputs, model_dir, monkeypatch):
    """The command leaves out a site that is constant over the texts (here: made so) and names it in a note."""
    import align_torch.inspect.compare as compare

    features = compare.text_site_features

    def embeddings_site_constant(model, batches):
        out = features(model, batches)
        out["text_model.embeddings"] = out["text_model.embeddings"][:1].expand_as(out["text_model.embeddings"])
        return out

    monkeypatch.setattr(compare, "text_site_features", embeddings_site_constant)
    report, stderr = _compare_with_itself(model_dir, inputs, tmp_path / "cka")
    assert report["text"]["constant_sites_a"] == report["text"]["constant_sites_b"] == ["text_model.embeddings"]
    assert "text_model.embeddings" not in report["text"]["sites_a"]
    assert "text site text_model.embeddings of model A" in stderr and "do not vary" in stderr
    _assert_diagonal_of_one(report)


def test_compare_builds_each_model_as_its_class(tmp_path, inputs, model_dir):
    out = tmp_path / "cka"
    argv = ["compare", model_dir, model_dir, "--images", inputs / "photos", "--out", out, "--device", "cpu"]
    status, _, stderr = run_cli(*argv, "--model-class-b", "tests.helpers.variants:CustomBlock")
    assert status == 0, stderr
    diagonal = json.loads((out / "cka.json").read_text())["image"]["cka"]
    assert diagonal[0][0] == pytest.approx(1.0, abs=1e-6) and diagonal[-1][-1] < 1 - 1e-5  # block 1 differs
    status, _, stderr = run_cli(*argv, "--overwrite", "--model-class-a", "nope:Nothing")
    assert status == 2 and "--model-class 'nope:Nothing'" in stderr


@pytest.mark.slow
def test_compare_texts_at_align_base_size(tmp_path, inputs, hf_full_dir):
    """Random align-base weights (transformers' AlignConfig()): the [CLS]-pooled embeddings site was rounding noise
    there (CKA -1.0 against itself); mean-pooled it varies, and every site kept has CKA 1."""
    report, _ = _compare_with_itself(hf_full_dir, inputs, tmp_path / "cka", "--batch-size", "3")
    _assert_diagonal_of_one(report)
    assert report["text"]["sites_a"][0] == "text_model.embeddings"
