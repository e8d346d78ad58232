"""align-torch probe: one linear probe per image site on class folders; colour classes are decodable from the
stem's pooled features, and labels stay with their images when some files cannot be read."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image, ImageDraw

from tests.helpers.cli import run_cli


def shapes(folder, per_class: int, seed: int) -> None:
    """Two classes, red and blue shapes of random size and place on grey; one unreadable file among them."""
    rng = random.Random(seed)
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (folder / name).mkdir(parents=True)
        for k in range(per_class):
            image = Image.new("RGB", (96, 96), (128, 128, 128))
            x, y, r = rng.randint(10, 60), rng.randint(10, 60), rng.randint(12, 30)
            ImageDraw.Draw(image).ellipse([x, y, x + r, y + r], fill=colour)
            image.save(folder / name / f"{k}.png")
    (folder / "blue" / "broken.png").write_bytes(b"not a png")  # mid-list: a label shift would show


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    shapes(root / "train", 10, 0)
    shapes(root / "val", 5, 1)
    return root


def test_probe_every_image_site(model_dir, data, tmp_path):
    out = tmp_path / "probe"
    args = (
        "probe",
        "--model",
        model_dir,
        "--train-classes",
        data / "train",
        "--val-classes",
        data / "val",
        "--out",
        out,
    )
    status, stdout, stderr = run_cli(*args, "--batch-size", "4")
    assert status == 0, stderr
    assert stderr.count("skipped") == 2  # the broken file of each folder, reported
    report = json.loads((out / "probe.json").read_text())
    sites = [r["site"] for r in report["sites"]]
    assert sites[0] == "vision_model.stem" and sites[-1] == "vision_model" and len(sites) >= 4
    stem = report["sites"][0]
    assert stem["top1"] == 100.0  # colour is linearly decodable from the mean stem features
    assert sorted(p.name for p in out.iterdir()) == ["probe.json", "probe.png"]
    status, _, stderr = run_cli(*args)
    assert status == 2 and "--overwrite" in stderr


def test_probe_leaves_out_a_constant_site_naming_it_and_takes_model_class(model_dir, data, tmp_path, monkeypatch):
    import align_torch.evaluate.site_probe as site_probe

    features = site_probe.image_site_features

    def stem_constant(model, batches):
        assert type(model).__name__ == "CustomBlock"  # --model-class builds the user's class
        out = features(model, batches)
        out["vision_model.stem"] = out["vision_model.stem"][:1].expand_as(out["vision_model.stem"])
        return out

    monkeypatch.setattr(site_probe, "image_site_features", stem_constant)
    out = tmp_path / "probe"
    # The first spellings, still read from older scripts: the positional MODEL, --train-dir and --val-dir.
    args = ("probe", model_dir, "--train-dir", data / "train", "--val-dir", data / "val", "--out", out)
    status, _, stderr = run_cli(*args, "--model-class", "tests.helpers.variants:CustomBlock")
    assert status == 0, stderr
    assert "site vision_model.stem is left out" in stderr
    sites = [r["site"] for r in json.loads((out / "probe.json").read_text())["sites"]]
    assert "vision_model.stem" not in sites and sites[-1] == "vision_model"
