"""A model folder written from a user's AlignModel subclass records the class in config.json, and the loader every
command uses builds it without --model-class; another class is refused, naming both; a stock folder records nothing
and any class builds from it; a folder from the Hub never has its recorded class imported on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import align_torch.checkpoint.hub as hub
from align_torch import AlignModel
from align_torch.inference.loader import load_model
from tests.helpers.variants import PreLN

VARIANT = "tests.helpers.variants:PreLN"


@pytest.fixture(scope="module")
def variant_dir(model_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("variant") / "model"
    PreLN.from_pretrained(model_dir).save_pretrained(folder)
    return folder


def test_a_variant_folder_records_and_builds_its_class(variant_dir, model_dir):
    record = json.loads((variant_dir / "config.json").read_text())["model_class"]
    assert record["class"] == VARIANT and record["source"].startswith("sha256:")
    assert type(load_model(variant_dir, "cpu")) is PreLN
    with pytest.raises(ValueError, match=f"made with model class {VARIANT}, not tests.helpers.variants:FlippedText"):
        load_model(variant_dir, "cpu", model_class="tests.helpers.variants:FlippedText")
    assert "model_class" not in json.loads((model_dir / "config.json").read_text())  # stock: nothing recorded
    assert type(load_model(model_dir, "cpu", model_class=VARIANT)) is PreLN
    assert type(load_model(model_dir, "cpu")) is AlignModel


def test_a_class_recorded_in_a_downloaded_folder_is_not_imported_on_its_own(variant_dir, monkeypatch):
    monkeypatch.setattr(hub, "snapshot_download", lambda repo_id, **kwargs: str(variant_dir))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ValueError, match=f"give --model-class {VARIANT} to build it"):
        load_model("someone/variant", "cpu")
    assert type(load_model("someone/variant", "cpu", model_class=VARIANT)) is PreLN
