"""Pixel parity of AlignImageProcessor with transformers' PIL-backend EfficientNet image processor.

The reference is `EfficientNetImageProcessorPil` built from align-base's preprocessor_config.json plus
`do_convert_rgb=True`: align-base's file leaves RGB conversion off, and then transformers hands a grayscale
image to the model as one channel (it crashes); ours always converts, the way transformers does when asked.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import PIL.Image
import pytest
import skimage.data as skimage_data
import torch
import transformers
from matplotlib import cbook

from align_torch.preprocess.image_processing import AlignImageProcessor, BatchFeature, center_crop, to_rgb_chw
from tests.helpers.proc_data import ALIGN_BASE_PREPROCESSOR, SMALL_PREPROCESSOR


def _photos() -> dict[str, PIL.Image.Image]:
    photos = {
        name: PIL.Image.fromarray(getattr(skimage_data, name)())
        for name in ("chelsea", "coffee", "astronaut", "rocket")
    }
    with PIL.Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        im.load()
        photos["grace_hopper"] = im  # a JPEG file as users open it (mode RGB, not yet converted)
    return photos


PHOTOS = _photos()


def _odd_images() -> dict[str, object]:
    rng = np.random.default_rng(0)
    cat = PIL.Image.fromarray(skimage_data.chelsea())
    rgba = np.asarray(cat.convert("RGBA")).copy()
    rgba[..., 3] = rng.integers(0, 256, rgba.shape[:2])  # varied transparency, so compositing matters
    palette_transparent = cat.convert("P")
    palette_transparent.info["transparency"] = 7
    coffee = skimage_data.coffee()
    images: dict[str, object] = {f"mode_{m}": cat.convert(m) for m in ("L", "LA", "P", "PA", "RGBA", "CMYK")}
    # Modes I and F holding values in [0, 255] (as convert() makes them) are read as 8-bit, like transformers.
    images |= {f"mode_{m}": cat.convert(m) for m in ("I", "F", "1", "YCbCr")}
    images |= {
        "gray_camera": PIL.Image.fromarray(skimage_data.camera()),
        "rgba_random_alpha": PIL.Image.fromarray(rgba),
        "palette_transparency": palette_transparent,
        "one_pixel": PIL.Image.fromarray(np.array([[[10, 200, 30]]], dtype=np.uint8)),
        "wide_5000x20": PIL.Image.fromarray(rng.integers(0, 256, (20, 5000, 3), dtype=np.uint8)),
        "tall_odd_7x333": PIL.Image.fromarray(rng.integers(0, 256, (333, 7, 3), dtype=np.uint8)),
        "np_hwc_uint8": coffee,
        "np_chw_uint8": np.ascontiguousarray(np.moveaxis(coffee, -1, 0)),
        "np_hwc_float_whole": coffee.astype(np.float32),
        "np_hw1_gray": skimage_data.camera()[..., None],
        "np_rgba_uint8": rgba,
        "torch_chw_uint8": torch.from_numpy(np.ascontiguousarray(np.moveaxis(coffee, -1, 0))),
    }
    return images


ODD = _odd_images()


def _deliberate_differences() -> dict[str, tuple[object, object]]:
    """name -> (input, the 8-bit image it stands for). transformers blanks the float images in [0, 1] (it
    rescales them a second time) and clips the 16-bit ones to white; ours must equal transformers on the
    8-bit image instead. The old parity tests asserted the blank and clipped outputs."""
    rng = np.random.default_rng(1)
    coffee = skimage_data.coffee()
    rgba = np.asarray(PIL.Image.fromarray(skimage_data.chelsea()).convert("RGBA")).copy()
    rgba[..., 3] = rng.integers(0, 256, rgba.shape[:2])
    gray = skimage_data.camera()
    sixteen = (rng.random((61, 47)) * 65535).astype(np.uint16)
    noise = torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(0))
    to_tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(coffee, -1, 0))).float().div(255)  # ToTensor
    return {
        "np_hwc_float_unit": (coffee / 255.0, coffee),
        "np_rgba_float_unit": (rgba / 255.0, rgba),
        "torch_chw_float_unit": (noise, np.round(noise.double().numpy() * 255).astype(np.uint8)),
        "torchvision_to_tensor": (to_tensor, coffee),
        "mode_I;16_full_range": (PIL.Image.fromarray(sixteen), np.round(sixteen / 257).astype(np.uint8)),
        "mode_I;16_photo": (PIL.Image.fromarray(gray.astype(np.uint16) * 257), gray),
        "mode_I_16_bit_png": (PIL.Image.fromarray(sixteen.astype(np.int32)), np.round(sixteen / 257).astype(np.uint8)),
        "mode_F_unit": (PIL.Image.fromarray(gray.astype(np.float32) / 255), gray),
    }


DELIBERATE = _deliberate_differences()


def _reference(config: dict):
    return transformers.EfficientNetImageProcessorPil(**config, do_convert_rgb=True)


@pytest.mark.parametrize("config", [ALIGN_BASE_PREPROCESSOR, SMALL_PREPROCESSOR], ids=["align_base", "small"])
def test_photographs_match_transformers(config):
    ref, ours = _reference(config), AlignImageProcessor.from_dict(config)
    images = list(PHOTOS.values())
    expected = ref(images, return_tensors="pt").pixel_values
    got = ours(images).pixel_values
    crop = config["crop_size"]["height"]
    assert got.shape == (len(images), 3, crop, crop) and got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= 1e-6
    # Not a degenerate pass: the pixels span align-base's [-1, 1] and differ between photos.
    if config is ALIGN_BASE_PREPROCESSOR:
        assert got.min().item() == -1.0 and got.max().item() == 1.0
    assert (got[0] - got[1]).abs().max().item() > 0.5


@pytest.mark.parametrize("config", [ALIGN_BASE_PREPROCESSOR, SMALL_PREPROCESSOR], ids=["align_base", "small"])
@pytest.mark.parametrize("name", list(ODD))
def test_odd_images_match_transformers(config, name):
    image = ODD[name]
    expected = _reference(config)(image, return_tensors="pt").pixel_values
    got = AlignImageProcessor.from_dict(config)(image).pixel_values
    assert got.shape == expected.shape == (1, 3, config["crop_size"]["height"], config["crop_size"]["width"])
    assert (got - expected).abs().max().item() <= 1e-6


@pytest.mark.parametrize("name", list(DELIBERATE))
def test_unit_floats_and_16_bit_images_are_scaled_not_blanked(name):
    image, eight_bit = DELIBERATE[name]
    config = ALIGN_BASE_PREPROCESSOR
    with pytest.warns(UserWarning, match="already scaled") if "float" in name or "tensor" in name else nullcontext():
        got = AlignImageProcessor.from_dict(config)(image).pixel_values
    if eight_bit.ndim == 2:
        eight_bit = PIL.Image.fromarray(eight_bit)  # transformers takes no 2-D arrays
    assert torch.equal(got, _reference(config)(eight_bit, return_tensors="pt").pixel_values)
    assert got.std().item() > 0.1  # not blank


def test_rgba_is_composited_onto_white():
    """A fully transparent pixel becomes white (1.0 after x/127.5 − 1), not its hidden colour."""
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red hidden behind alpha 0
    config = {**ALIGN_BASE_PREPROCESSOR, "do_resize": False, "do_center_crop": False}
    got = AlignImageProcessor.from_dict(config)(PIL.Image.fromarray(rgba, mode="RGBA")).pixel_values
    assert torch.equal(got, torch.ones(1, 3, 8, 8))


@pytest.mark.parametrize("height,width", [(10, 10), (11, 10), (10, 13), (3, 4), (1, 1), (5, 9)])
def test_center_crop_offsets_match_transformers(height, width):
    """Odd margins and images smaller than the crop (zero padding) use transformers' exact offsets."""
    from transformers.image_transforms import center_crop as ref_center_crop

    image = np.arange(3 * height * width, dtype=np.float32).reshape(3, height, width) + 1
    for crop in [(4, 4), (5, 7), (6, 3), (12, 11)]:
        expected = ref_center_crop(image, crop, input_data_format="channels_first")
        got = center_crop(image, crop)
        assert got.shape == (3, *crop)
        np.testing.assert_array_equal(got, expected)


def test_batch_forms_agree():
    """A list, a 4-D array and a 4-D tensor of the same images give the same pixels; single → batch of 1."""
    proc = AlignImageProcessor.from_dict(SMALL_PREPROCESSOR)
    arrays = [np.asarray(PHOTOS["chelsea"].resize((90, 80))), np.asarray(PHOTOS["coffee"].resize((90, 80)))]
    from_list = proc(arrays).pixel_values
    assert from_list.shape == (2, 3, 64, 64)
    assert torch.equal(proc(np.stack(arrays)).pixel_values, from_list)
    assert torch.equal(proc(torch.from_numpy(np.stack(arrays))).pixel_values, from_list)
    assert torch.equal(proc(arrays[1]).pixel_values, from_list[1:])
    assert isinstance(proc(arrays, return_tensors="np").pixel_values, np.ndarray)


def test_batch_feature_attribute_access_and_to():
    out = AlignImageProcessor.from_dict(SMALL_PREPROCESSOR)(PHOTOS["rocket"])
    assert isinstance(out, BatchFeature) and out.pixel_values is out["pixel_values"]
    assert out.to(dtype=torch.float16).pixel_values.dtype == torch.float16
    with pytest.raises(AttributeError):
        _ = out.input_ids


def test_flags_from_config_are_honoured():
    """Without resize/crop/rescale the pixels are the raw uint8 values as float32, in the input's size."""
    config = {**ALIGN_BASE_PREPROCESSOR, "do_resize": False, "do_center_crop": False, "do_rescale": False}
    image = np.random.default_rng(1).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    got = AlignImageProcessor.from_dict(config)(image).pixel_values
    assert got.shape == (1, 3, 17, 23)
    np.testing.assert_array_equal(got[0].numpy(), np.moveaxis(image, -1, 0).astype(np.float32))


def test_to_dict_round_trips():
    proc = AlignImageProcessor.from_dict(SMALL_PREPROCESSOR)
    assert proc.to_dict() == SMALL_PREPROCESSOR
    assert AlignImageProcessor.from_dict(proc.to_dict()) == proc


@pytest.mark.parametrize(
    "bad,error,words",
    [
        ([], ValueError, "empty"),
        ("cat.jpg", TypeError, "str"),
        (np.zeros((2, 3, 4, 5, 6), dtype=np.uint8), ValueError, "dimensions"),
        (np.zeros((10, 10, 2), dtype=np.uint8), ValueError, "channel"),
        (np.zeros((0, 5, 3), dtype=np.uint8), ValueError, "no pixels"),
        (np.full((10, 10, 3), 300.5), ValueError, "[0, 1]"),
        (np.zeros((10, 10, 3), dtype=bool), ValueError, "images[0]: image has dtype bool"),
        (torch.zeros(3, 10, 10, dtype=torch.bool), ValueError, "dtype bool"),
        (np.zeros((10, 10, 3), dtype=np.complex64), ValueError, "dtype complex64"),
        (torch.zeros(3, 10, 10, dtype=torch.complex64), ValueError, "dtype complex64"),
        (PIL.Image.new("RGB", (0, 0)), ValueError, "images[0]: image has size 0×0"),
        (PIL.Image.new("L", (5, 0)), ValueError, "5×0"),
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((0, 0, 3), np.uint8)], ValueError, r"images[1]: .*no pixels"),
        (np.full((10, 10, 3), np.nan, dtype=np.float32), ValueError, "NaN"),
        (PIL.Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)), ValueError, "mode I .*[0, 65535]"),
        (PIL.Image.fromarray(np.full((4, 4), 300.5, dtype=np.float32)), ValueError, "mode F .*[0, 1] or [0, 255]"),
    ],
)
def test_bad_inputs_raise_naming_the_problem(bad, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        AlignImageProcessor()(bad)


def test_grayscale_array_without_channel_axis_is_accepted():
    gray = skimage_data.camera()
    got = to_rgb_chw(gray)
    assert got.shape == (3, *gray.shape)
    np.testing.assert_array_equal(got[2], gray)
