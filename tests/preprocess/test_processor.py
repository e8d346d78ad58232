"""AlignProcessor against transformers.AlignProcessor on checkpoint folders, saving, and Hub resolution."""

from __future__ import annotations

import json
import os

import numpy as np
import PIL.Image
import pytest
import skimage.data as skimage_data
import torch
import transformers

import align_torch.checkpoint.hub
from align_torch.checkpoint.hub import HubError
from align_torch.preprocess.image_processing import BatchFeature
from align_torch.preprocess.processor import AlignProcessor
from tests.helpers.proc_data import ALIGN_BASE_PREPROCESSOR, SMALL_PREPROCESSOR, texts, write_checkpoint

PHOTOS = [PIL.Image.fromarray(getattr(skimage_data, n)()) for n in ("chelsea", "coffee", "astronaut")]
CAPTIONS = ["a photo of a cat", "a cup of coffee", "an astronaut"]


@pytest.fixture(scope="module", params=[ALIGN_BASE_PREPROCESSOR, SMALL_PREPROCESSOR], ids=["align_base", "small"])
def folder(request, tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"), request.param)


def _assert_equal(got: BatchFeature, expected) -> None:
    assert set(got) == set(expected.keys())
    for key in expected.keys():
        assert got[key].dtype == expected[key].dtype, key
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize(
    "text,images",
    [
        (CAPTIONS, PHOTOS),
        (CAPTIONS[0], PHOTOS[0]),
        (CAPTIONS[:2], PHOTOS[2]),
        (CAPTIONS, None),
        (None, PHOTOS),
        (texts(40, seed=3), None),
    ],
    ids=["lists", "single", "mixed", "text_only", "images_only", "varied_texts"],
)
def test_matches_transformers_align_processor(folder, text, images):
    ref = transformers.AlignProcessor.from_pretrained(folder)
    ours = AlignProcessor.from_pretrained(folder)
    # truncation=True: transformers' default would leave texts over 64 tokens unpadded and ragged.
    expected = ref(text=text, images=images, truncation=True, return_tensors="pt")
    got = ours(text=text, images=images)
    _assert_equal(got, expected)
    if text is not None:
        assert got.input_ids.shape[1] == 64 and got.input_ids.dtype == torch.int64
    if images is not None:
        crop = ours.image_processor.crop_size
        assert got.pixel_values.shape[1:] == (3, *crop) and got.pixel_values.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs",
    [{"padding": True}, {"padding": "longest"}, {"padding": "max_length", "max_length": 20}],
    ids=["padding_true", "longest", "max_length_20"],
)
def test_padding_keywords_match_transformers(folder, kwargs):
    ref = transformers.AlignProcessor.from_pretrained(folder)
    ours = AlignProcessor.from_pretrained(folder)
    batch = texts(64, seed=5)
    expected = ref(text=batch, truncation=True, return_tensors="pt", **kwargs)
    got = ours(text=batch, **kwargs)
    _assert_equal(got, expected)


def test_padding_true_pads_to_longest_not_64(folder):
    got = AlignProcessor.from_pretrained(folder)(text=["a cat", "a photo of a cat"], padding=True)
    assert got.input_ids.shape == (2, 7)


def test_texts_over_64_tokens_are_truncated_by_default(folder):
    long_text = " ".join(["cat"] * 200)
    got = AlignProcessor.from_pretrained(folder)(text=[long_text, "a cat"])
    assert got.input_ids.shape == (2, 64) and got.input_ids[0, -1].item() == 102  # ends with [SEP]
    kept = AlignProcessor.from_pretrained(folder)(text=long_text, truncation=False)
    assert kept.input_ids.shape == (1, 202)


def test_output_feeds_a_model_by_keyword(folder):
    inputs = AlignProcessor.from_pretrained(folder)(text=CAPTIONS[:2], images=PHOTOS[:2])

    def model(input_ids, attention_mask, token_type_ids, pixel_values):
        return input_ids.shape[0] + pixel_values.shape[0]

    assert model(**inputs) == 4
    assert inputs.pixel_values is inputs["pixel_values"]
    assert inputs.to(dtype=torch.float16).input_ids.dtype == torch.int64  # ids are never cast


def test_save_pretrained_round_trips_and_transformers_reads_it(folder, tmp_path):
    ours = AlignProcessor.from_pretrained(folder)
    target = tmp_path / "finetuned"
    target.mkdir()
    (target / "config.json").write_text("{}")  # a model folder's own file is left alone
    ours.save_pretrained(target)
    names = sorted(p.name for p in target.iterdir())
    assert names == sorted(
        ["config.json", "preprocessor_config.json", "special_tokens_map.json", "tokenizer_config.json", "vocab.txt"]
    )
    assert (target / "vocab.txt").read_bytes() == (folder / "vocab.txt").read_bytes()
    assert json.loads((target / "preprocessor_config.json").read_text()) == json.loads(
        (folder / "preprocessor_config.json").read_text()
    )
    _assert_equal(
        AlignProcessor.from_pretrained(target)(text=CAPTIONS, images=PHOTOS), ours(text=CAPTIONS, images=PHOTOS)
    )
    ref = transformers.AlignProcessor.from_pretrained(target)
    _assert_equal(ours(text=CAPTIONS, images=PHOTOS), ref(text=CAPTIONS, images=PHOTOS, return_tensors="pt"))


def test_save_pretrained_failure_leaves_old_files_whole(folder, tmp_path, monkeypatch):
    ours = AlignProcessor.from_pretrained(folder)
    ours.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    ours.image_processor.crop_size = (32, 32)
    with pytest.raises(OSError, match="disk full"):
        ours.save_pretrained(tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(after) == set(before)  # no staging folder left behind
    for name, contents in after.items():  # each file is either the old one or the complete new one
        assert contents == before[name] or name == "preprocessor_config.json"
    assert json.loads(after["preprocessor_config.json"])["crop_size"] == {"height": 32, "width": 32}


def test_repo_id_resolves_through_the_hub(folder, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs["allow_patterns"]))
        return str(folder)

    monkeypatch.setattr(align_torch.checkpoint.hub, "snapshot_download", fake_snapshot_download)
    proc = AlignProcessor.from_pretrained("kakaobrain/align-base")
    assert proc(text="a photo of a cat").input_ids[0, :3].tolist() == [101, 168, 2043]
    assert calls == [("kakaobrain/align-base", align_torch.checkpoint.hub.METADATA_PATTERNS)]  # no weights fetched


def test_offline_with_empty_cache_raises_hub_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_CACHE at import time, so set the constant it consults, not the env var.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set.*not in the local Hugging Face cache"):
        AlignProcessor.from_pretrained("kakaobrain/align-base")
    with pytest.raises(HubError, match="not in the local Hugging Face cache"):
        AlignProcessor.from_pretrained("kakaobrain/align-base", cache_dir=tmp_path / "other")


def test_folder_without_preprocessor_config_is_refused(tmp_path):
    folder = write_checkpoint(tmp_path, ALIGN_BASE_PREPROCESSOR)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        AlignProcessor.from_pretrained(folder)


def test_nothing_to_process_is_refused(folder):
    with pytest.raises(ValueError, match="text, images or both"):
        AlignProcessor.from_pretrained(folder)()


def test_image_only_call_has_only_pixels(folder):
    got = AlignProcessor.from_pretrained(folder)(images=np.asarray(PHOTOS[0]))
    assert list(got) == ["pixel_values"] and got.pixel_values.shape[0] == 1
