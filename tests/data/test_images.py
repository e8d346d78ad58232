"""Image files for batch jobs: EXIF orientation, clear errors for broken files, listing, the skipping Dataset."""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageFile
import pytest
import torch
from torch.utils.data import DataLoader

from align_torch.data.images import ImageFileDataset, ImageLoadError, collate_images, list_images, load_image
from tests.helpers.job_data import photo, write_collection, write_exif_rotated


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images") / "photos"
    return folder, write_collection(folder)


def test_load_image_applies_exif_orientation(tmp_path):
    shown = write_exif_rotated(tmp_path / "r.jpg", photo("chelsea"))
    image = load_image(tmp_path / "r.jpg")
    assert image.mode == "RGB"
    assert image.size == (300, 451)  # (width, height): the 451×300 photo turned upright
    np.testing.assert_array_equal(np.asarray(image), shown)


@pytest.mark.parametrize(
    "name, reason",
    [("truncated.jpg", "truncated"), ("notes_as.jpg", "not an image"), ("sub/empty.png", "empty file")],
)
def test_broken_files_raise_image_load_error_naming_the_path(collection, name, reason):
    folder, _ = collection
    with pytest.raises(ImageLoadError, match=reason) as info:
        load_image(folder / name)
    assert info.value.path == str(folder / name)
    assert str(folder / name) in str(info.value)


def test_truncated_jpeg_fails_even_though_pil_opens_it_lazily(collection):
    folder, _ = collection
    assert not PIL.ImageFile.LOAD_TRUNCATED_IMAGES
    with PIL.Image.open(folder / "truncated.jpg") as lazily:
        assert lazily.size == (451, 300)  # PIL reads the header happily; only decoding fails
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(folder / "truncated.jpg")


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "absent.jpg")
    with pytest.raises(ImageLoadError, match="not a file"):
        load_image(tmp_path)


def test_transparency_goes_onto_white_and_grey_becomes_rgb(tmp_path):
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # one opaque red pixel, the rest fully transparent
    PIL.Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png"))
    assert out.shape == (4, 5, 3)
    assert out[0, 0].tolist() == [200, 0, 0] and out[1, 1].tolist() == [255, 255, 255]
    PIL.Image.fromarray(np.full((3, 3), 77, dtype=np.uint8), "L").save(tmp_path / "g.png")
    assert np.asarray(load_image(tmp_path / "g.png")).tolist() == [[[77] * 3] * 3] * 3


def test_list_images_folder_is_recursive_sorted_and_skips_hidden_and_non_images(collection):
    folder, files = collection
    listed = list_images(folder)
    assert listed == sorted(files["good"] + files["bad"])
    assert all(not p.name.startswith(".") and p.suffix != ".txt" for p in listed)


def test_list_images_globs_files_and_duplicates(collection, tmp_path):
    folder, files = collection
    assert list_images(str(folder / "**" / "*.png")) == sorted(folder.rglob("*.png"))
    odd = tmp_path / "photo.data"
    photo("rocket").save(odd, format="PNG")
    # Named files keep any suffix; the same file listed twice (folder + path) is kept once, first place.
    listed = list_images([odd, folder / "chelsea.jpg", folder])
    assert listed[:2] == [odd, folder / "chelsea.jpg"]
    assert len(listed) == 1 + len(files["good"] + files["bad"])


def test_list_images_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list_images(tmp_path / "nothing_here")
    with pytest.raises(FileNotFoundError, match="no files match"):
        list_images(str(tmp_path / "*.jpg"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        list_images(tmp_path / "empty")


def test_dataset_reports_bad_files_and_collate_drops_them(collection):
    folder, files = collection
    paths = list_images(folder)

    def transform(image):  # (3, 8, 8) tensor: enough to tell images apart
        return torch.from_numpy(np.array(image.resize((8, 8)))).permute(2, 0, 1).float()

    loader = DataLoader(ImageFileDataset(paths, transform), batch_size=3, num_workers=2, collate_fn=collate_images)
    good, bad = {}, {}
    for batch in loader:
        assert batch.pixel_values is None or batch.pixel_values.shape == (len(batch.indices), 3, 8, 8)
        for row, i in enumerate(batch.indices):
            good[paths[i]] = batch.pixel_values[row]
        bad.update({paths[i]: reason for i, reason in batch.failures})
    assert sorted(good) == sorted(files["good"]) and sorted(bad) == sorted(files["bad"])
    assert "truncated" in bad[folder / "truncated.jpg"] and "0 bytes" in bad[folder / "sub" / "empty.png"]
    expected = transform(load_image(folder / "chelsea.jpg"))
    torch.testing.assert_close(good[folder / "chelsea.jpg"], expected, rtol=0, atol=0)


def test_dataset_reports_a_failing_transform_instead_of_raising(collection):
    folder, _ = collection

    def transform(image):
        raise RuntimeError("cannot handle this one")

    item = ImageFileDataset([folder / "chelsea.jpg"], transform)[0]
    assert item.pixels is None and "RuntimeError: cannot handle this one" in item.error
