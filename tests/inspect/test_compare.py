"""align-torch compare: a model against itself has CKA 1 on the diagonal of both towers; against a copy whose
last image stage was re-initialised, the stem is unchanged (1) and that stage's output is not; the folder holds
the JSON and the PNGs and is written atomically."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from align_torch import AlignModel
from tests.helpers.cli import run_cli
from tests.helpers.job_data import photo


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare") / "photos"
    folder.mkdir()
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        image = photo(name)
        image.save(folder / f"{name}.png")
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((0, 0, 200, 200)).save(folder / f"{name}_crop.png")
    return folder


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    path = tmp_path_factory.mktemp("compare_texts") / "texts.txt"
    lines = ["a cat", "a cup of coffee", "an astronaut", "a rocket on its pad", "a dog in the snow", "red shapes"]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return path


def test_a_model_with_itself_has_a_diagonal_of_one(model_dir, images, texts, tmp_path):
    out = tmp_path / "cka"
    status, stdout, stderr = run_cli(
        "compare", model_dir, model_dir, "--images", images, "--texts", texts, "--out", out, "--batch-size", "3"
    )
    assert status == 0, stderr
    report = json.loads((out / "cka.json").read_text())
    for tower, inputs in (("image", 8), ("text", 6)):
        m = report[tower]
        assert m["num_inputs"] == inputs and m["sites_a"] == m["sites_b"]
        for i, row in enumerate(m["cka"]):
            assert row[i] == pytest.approx(1.0, abs=1e-6)
        assert min(min(row) for row in m["cka"]) < 0.99  # different sites do differ: not a matrix of ones
        with Image.open(out / f"{tower}_cka.png") as png:
            assert png.size[0] > 100
    assert "image_projection" not in report["image"]["sites_a"]
    assert report["image"]["sites_a"][0] == "vision_model.stem" and report["text"]["sites_a"][-1] == "text_projection"
    assert sorted(p.name for p in out.iterdir()) == ["cka.json", "image_cka.png", "text_cka.png"]
    status, _, stderr = run_cli("compare", model_dir, model_dir, "--images", images, "--out", out)
    assert status == 2 and "--overwrite" in stderr  # an existing folder is kept unless asked


def test_a_changed_last_stage_shows_where_it_changed(model_dir, images, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(model_dir, changed)
    model = AlignModel.from_pretrained(model_dir)
    last = model.vision_model.stage_ends[-1]
    torch.manual_seed(1)
    for block in model.vision_model.blocks[model.vision_model.stage_ends[-2] + 1 : last + 1]:
        for p in block.parameters():
            if p.ndim > 1:
                torch.nn.init.normal_(p, std=0.2)
    model.save_pretrained(tmp_path / "weights")
    shutil.copy(tmp_path / "weights" / "model.safetensors", changed / "model.safetensors")
    out = tmp_path / "cka"
    status, stdout, stderr = run_cli("compare", model_dir, changed, "--images", images, "--out", out)
    assert status == 0, stderr
    m = json.loads((out / "cka.json").read_text())["image"]
    diagonal = [m["cka"][i][i] for i in range(len(m["sites_a"]))]
    # sites: stem, each stage's output, the pooled embedding. Up to the stage before the change: the same.
    assert diagonal[:-2] == pytest.approx([1.0] * (len(diagonal) - 2), abs=1e-6)
    assert max(diagonal[-2:]) < 0.99, diagonal  # the re-initialised last stage and its pooled embedding
    assert "text" not in json.loads((out / "cka.json").read_text())
