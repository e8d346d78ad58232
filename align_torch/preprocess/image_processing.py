"""Image preprocessing for ALIGN: pixel-identical to transformers' PIL-backend EfficientNet image processor.

align-base's recipe (preprocessor_config.json): convert to RGB, resize the uint8 image to 346×346 with
PIL bilinear, centre-crop 289×289, x / 127.5 − 1, channels first, float32. Every step, including the
float64 intermediate in the rescale and the crop offsets for odd sizes, follows transformers 5
(`EfficientNetImageProcessorPil` with `do_convert_rgb=True`) so the pixels agree to the last bit.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import PIL.Image
import torch

# One image as users pass it; a list of these, or a 4-D array/tensor, is a batch.
ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor

# transformers' rule for telling CHW from HWC: a 1, 3 or 4 first dimension wins, even when the last one
# would also fit (a 3×H×4 array is read as three channels).
_CHANNEL_COUNTS = (1, 3, 4)


class BatchFeature(dict):
    """Model inputs: a dict whose keys are also attributes, so `model(**batch)` and `batch.pixel_values` work."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> BatchFeature:
        """Move every tensor to `device`; cast only floating-point tensors (pixels) to `dtype`, never the ids."""
        out = BatchFeature()
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                value = value.to(device=device, dtype=dtype if value.is_floating_point() else None)
            out[key] = value
        return out


def _size_hw(size: Any, name: str) -> tuple[int, int]:
    """Read a size as preprocessor_config.json writes it: {"height", "width"} or one int for a square."""
    if isinstance(size, dict) and "height" in size and "width" in size:
        size = (size["height"], size["width"])
    elif _is_int(size):
        size = (size, size)
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_int(v) and v >= 1 for v in size)):
        raise ValueError(f"{name} must be a positive int or a dict with positive 'height' and 'width', got {size!r}")
    return int(size[0]), int(size[1])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class AlignImageProcessor:
    """Turns images into `pixel_values` (N, 3, H, W) float32, as configured by a preprocessor_config.json."""

    do_resize: bool = True
    size: tuple[int, int] = (346, 346)  # (height, width)
    resample: int = PIL.Image.Resampling.BILINEAR
    do_center_crop: bool = True
    crop_size: tuple[int, int] = (289, 289)  # (height, width)
    do_rescale: bool = True
    rescale_factor: float = 1 / 127.5
    rescale_offset: bool = True  # after rescaling subtract 1: [0, 255] → [-1, 1]
    do_normalize: bool = False
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    include_top: bool = False  # EfficientNet's classifier input: divide once more by image_std
    # The file as read, so save_pretrained keeps keys this class does not use (image_processor_type, ...).
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("do_") or f.name in ("rescale_offset", "include_top"):
                if not isinstance(value, bool):
                    raise ValueError(f"{f.name} must be true or false, got {value!r}")
        self.size = _size_hw(self.size, "size")
        self.crop_size = _size_hw(self.crop_size, "crop_size")
        if not _is_int(self.resample) or self.resample not in {int(r) for r in PIL.Image.Resampling}:
            raise ValueError(f"resample must be a PIL resampling filter 0-5, got {self.resample!r}")
        if not _is_number(self.rescale_factor):
            raise ValueError(f"rescale_factor must be a finite number, got {self.rescale_factor!r}")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if not (isinstance(value, (tuple, list)) and len(value) == 3 and all(_is_number(v) for v in value)):
                raise ValueError(f"{name} must be 3 finite numbers (one per RGB channel), got {value!r}")
        if 0 in self.image_std:
            raise ValueError(f"image_std must not be 0, got {list(self.image_std)}")

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> AlignImageProcessor:
        """Build from the contents of preprocessor_config.json; keys not given keep align-base's values."""
        if not isinstance(config, dict):
            raise ValueError(f"an image processor config must be a JSON object, got {type(config).__name__}")
        names = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in config.items() if k in names}
        for key in ("image_mean", "image_std"):
            if key in kwargs:
                value = kwargs[key]
                kwargs[key] = tuple(value) if isinstance(value, (list, tuple)) else (value,) * 3
        return cls(**kwargs, extra=dict(config))

    def to_dict(self) -> dict[str, Any]:
        """The preprocessor_config.json contents: the loaded file with this processor's values written in."""
        config = dict(self.extra)
        config.setdefault("image_processor_type", "EfficientNetImageProcessor")
        for f in fields(self):
            if f.name != "extra":
                config[f.name] = getattr(self, f.name)
        config["size"] = {"height": self.size[0], "width": self.size[1]}
        config["crop_size"] = {"height": self.crop_size[0], "width": self.crop_size[1]}
        config["resample"] = int(self.resample)
        config["image_mean"] = list(self.image_mean)
        config["image_std"] = list(self.image_std)
        return config

    def __call__(
        self, images: ImageInput | Sequence[ImageInput], return_tensors: str | None = "pt", **options: Any
    ) -> BatchFeature:
        """Preprocess one image or a batch into {"pixel_values": (N, 3, H, W) float32 (the image's integers when
        neither rescaled nor normalised, as transformers)}.

        `return_tensors="pt"` gives a torch tensor, "np" (or None) a numpy array. `options` override this
        processor's settings for the call, with transformers' names and meaning (`do_resize`, `size`, `resample`,
        `do_center_crop`, `crop_size`, `do_rescale`, `rescale_factor`, `rescale_offset`, `do_normalize`,
        `image_mean`, `image_std`, `include_top`); `data_format` only as "channels_first". Any other is refused.
        """
        if options:
            return self.with_options(**options)(images, return_tensors=return_tensors)
        pixels = []
        for i, image in enumerate(_as_list(images)):
            try:
                pixels.append(self.preprocess_one(image))
            except (TypeError, ValueError) as e:
                raise type(e)(f"images[{i}]: {e}") from e
        shapes = {p.shape for p in pixels}
        if len(shapes) > 1:
            raise ValueError(
                f"images came out in different sizes {sorted(shapes)}; enable do_resize or do_center_crop "
                "to batch images of different sizes"
            )
        batch = np.stack(pixels)  # (N, 3, H, W)
        if (
            batch.dtype.kind == "f"
        ):  # integer pixels stay integers only without rescaling or normalising, as in transformers
            batch = batch.astype(np.float32, copy=False)
        if return_tensors == "pt":
            return BatchFeature(pixel_values=torch.from_numpy(batch))
        if return_tensors in ("np", None):
            return BatchFeature(pixel_values=batch)
        raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")

    def with_options(self, **options: Any) -> AlignImageProcessor:
        """A copy with transformers' per-call options applied (checked as a preprocessor_config.json's are)."""
        data_format = options.pop("data_format", None)
        if data_format not in (None, "channels_first"):
            raise ValueError(f"data_format={data_format!r} is not supported: pixel_values are channels first")
        names = {f.name for f in fields(self)} - {"extra"}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"image processor got unexpected options: {', '.join(unknown)} (it takes {sorted(names)})")
        for key in ("image_mean", "image_std"):
            if key in options and _is_number(options[key]):
                options[key] = (options[key],) * 3  # transformers takes one number for every channel
        return dataclasses.replace(self, **options)

    def preprocess_one(self, image: ImageInput) -> np.ndarray:
        """One image → (3, H, W) array, in the order transformers applies the steps."""
        return self.normalize_one(self.resize_one(image))

    def steps(self) -> list[tuple[str, Callable[[Any], np.ndarray]]]:
        """preprocess_one as named steps, for the embedding jobs' per-stage timing: resize (RGB, resize, crop),
        then normalise (rescale, normalise)."""
        return [("resize", self.resize_one), ("normalise", self.normalize_one)]

    def resize_one(self, image: ImageInput) -> np.ndarray:
        """preprocess_one's first part: to RGB, resized and cropped, still in the image's dtype (uint8 for PIL)."""
        # Without rescaling, float pixels are used as given (transformers' meaning of do_rescale=False).
        x = to_rgb_chw(image, scaled_floats=self.do_rescale)  # (3, h, w), dtype as given (uint8 for PIL)
        if self.do_resize:
            x = _pil_resize(x, self.size, self.resample)
        if self.do_center_crop:
            x = center_crop(x, self.crop_size)
        return x

    def normalize_one(self, x: np.ndarray) -> np.ndarray:
        """preprocess_one's second part: (3, H, W) resized pixels -> rescaled and normalised."""
        if self.do_rescale:
            # float64 product then float32, as transformers does, so the result matches it bit for bit.
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
            if self.rescale_offset:
                x -= 1
        if self.do_normalize:
            x = _normalize(x, self.image_mean, self.image_std)
        if self.include_top:
            x = _normalize(x, (0.0,) * len(self.image_std), self.image_std)
        return x


def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """A single image, a list/tuple of images, or a 4-D array/tensor (a batch) → list of single images."""
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("images is an empty list; pass at least one image")
        flat: list[ImageInput] = []
        for image in images:
            is_batch = isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4
            flat.extend(list(image) if is_batch else [image])
        return flat
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        if len(images) == 0:
            raise ValueError("images is an empty batch; pass at least one image")
        return list(images)
    return [images]


def to_rgb_chw(image: ImageInput, scaled_floats: bool = True) -> np.ndarray:
    """Any supported image → (3, H, W) numpy array, converted to RGB the way transformers' convert_to_rgb does.

    PIL images of any mode go through PIL's own conversion; transparency (an alpha band, or a palette's
    `transparency`) is composited onto white. 16-bit and 32-bit PIL modes (I;16, I, F) are scaled to 8 bits
    first (see `_high_depth_to_l`). Arrays and tensors may be HWC or CHW with 1, 3 or 4 channels (or 2-D
    grayscale); 1 channel is repeated, 4 channels (RGBA) are composited onto white. Float arrays with every
    value in [0, 1] (torchvision's ToTensor) are read as already-scaled images: round(x · 255) as uint8, unless
    `scaled_floats` is False (float pixels kept as they are).
    """
    if isinstance(image, PIL.Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"image has size {image.width}×{image.height}, with no pixels")
        if image.mode in _HIGH_DEPTH_MODES:
            image = _high_depth_to_l(image)
        elif image.mode == "La":
            image = image.convert("LA")  # PIL converts premultiplied La to nothing but LA
        has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
        if has_alpha:
            rgba = image.convert("RGBA")
            white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = PIL.Image.alpha_composite(white, rgba).convert("RGB")
        else:
            rgb = image.convert("RGB")
        return np.moveaxis(np.asarray(rgb), -1, 0)  # (H, W, 3) → (3, H, W)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        # numpy has no bfloat16.
        image = (image.float() if image.dtype == torch.bfloat16 else image).numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"an image must be a PIL.Image.Image, numpy array or torch tensor, got {type(image).__name__}")
    if image.dtype.kind not in "uif":  # bool ("b"), complex ("c"), objects, strings
        raise ValueError(f"image has dtype {image.dtype}; expected uint8, another integer type or a float type")
    if image.size == 0:
        raise ValueError(f"image has shape {image.shape}, with no pixels")
    if scaled_floats and np.issubdtype(image.dtype, np.floating):
        image = _unit_float_to_uint8(image)
    if image.ndim == 2:
        image = image[None]  # (H, W) → (1, H, W)
    if image.ndim != 3:
        raise ValueError(
            f"an image array must have 2 or 3 dimensions (H, W), (C, H, W) or (H, W, C), got shape {image.shape}"
        )
    if image.shape[0] in _CHANNEL_COUNTS:
        hwc = np.moveaxis(image, 0, -1)
    elif image.shape[-1] in _CHANNEL_COUNTS:
        hwc = image
    else:
        raise ValueError(
            f"cannot find the channel axis of an image of shape {image.shape}: "
            "expected 1, 3 or 4 channels first (C, H, W) or last (H, W, C)"
        )
    channels = hwc.shape[-1]
    if channels == 1:
        hwc = np.repeat(hwc, 3, axis=-1)
    elif channels == 4:
        hwc = _composite_on_white(hwc)
    return np.moveaxis(hwc, -1, 0)


# PIL modes holding more than 8 bits per pixel; PIL's convert("RGB") clips them to [0, 255].
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _high_depth_to_l(image: PIL.Image.Image) -> PIL.Image.Image:
    """A 16-bit, 32-bit integer or float grayscale PIL image → one PIL converts to RGB without clipping.

    I;16 spans [0, 65535] and is divided by 257 (65535 → 255). Mode I (what PIL opens 16-bit PNGs as) and
    mode F with values within [0, 255] are left to PIL, as transformers does; mode I up to 65535 is divided by
    257; mode F within [0, 1] is scaled by 255, like a float array. Anything else is refused, not guessed.
    Scaled values are rounded to nearest. transformers clips instead (a 16-bit photo turns white): a
    deliberate difference.
    """
    with np.errstate(invalid="ignore"):  # a signalling NaN in mode F; refused below
        values = np.asarray(image).astype(np.float64)  # (H, W)
    low, high = float(values.min()), float(values.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"a mode {image.mode} image has NaN or infinite values")
    if image.mode in ("I", "F") and 0.0 <= low and high <= 255.0 and not (image.mode == "F" and high <= 1.0):
        return image
    if image.mode == "F" and 0.0 <= low and high <= 1.0:
        scale = 255.0
    elif image.mode != "F" and 0.0 <= low and high <= 65535.0:
        scale = 1 / 257
    else:
        expected = "[0, 1] or [0, 255]" if image.mode == "F" else "[0, 65535]"
        raise ValueError(f"a mode {image.mode} image must have values in {expected}, got [{low}, {high}]")
    return PIL.Image.fromarray(np.round(values * scale).astype(np.uint8), mode="L")


def _unit_float_to_uint8(image: np.ndarray) -> np.ndarray:
    """Float pixels all within [0, 1] → uint8 round(x · 255); other floats pass through unchanged.

    transformers would rescale such an image once more (x / 127.5 − 1 ≈ −1: a blank image, with a warning).
    ToTensor's x = v / 255 comes back as v exactly, so a ToTensor'd image gives the same pixels as the
    original. A float image of whole numbers in [0, 255] with values above 1 is read as 8-bit, as before.
    """
    if not np.isfinite(image).all():
        raise ValueError("image has NaN or infinite values")
    if image.min() < 0.0 or image.max() > 1.0:
        return image
    warnings.warn(
        "a float image with every value in [0, 1] is read as already scaled (round(x * 255) as uint8), "
        "not rescaled again as transformers would (which gives a blank image)",
        stacklevel=4,
    )
    return np.round(image.astype(np.float64) * 255).astype(np.uint8)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) → (H, W, 3): blend onto white, alpha in [0, 255] for integers and [0, 1] for floats."""
    is_int = np.issubdtype(rgba.dtype, np.integer)
    if not is_int and (rgba.min() < 0.0 or rgba.max() > 1.0):
        raise ValueError(f"a float RGBA image must have values in [0, 1], got [{rgba.min()}, {rgba.max()}]")
    white = 255 if is_int else 1.0
    alpha = rgba[..., 3:4] / white
    blended = alpha * rgba[..., :3] + (1 - alpha) * white
    return np.round(blended).astype(rgba.dtype) if is_int else blended.astype(rgba.dtype)


def _pil_resize(chw: np.ndarray, size_hw: tuple[int, int], resample: int) -> np.ndarray:
    """Resize through PIL on uint8 pixels, as transformers does. Non-uint8 input must hold whole numbers in
    [0, 255] (floats in [0, 1] were already turned into uint8 by to_rgb_chw)."""
    if chw.dtype != np.uint8 and _is_unit_float(chw):
        # transformers' resize: x * 255 (float32) truncated to uint8, resized through PIL, then / 255 again.
        u8 = (chw.astype(np.float64) * 255).astype(np.float32).astype(np.uint8)
        return (_pil_resize(u8, size_hw, resample).astype(np.float64) * (1 / 255)).astype(np.float32)
    if chw.dtype != np.uint8:
        if not np.allclose(chw, chw.astype(np.int64)):
            raise ValueError(
                f"float image values must lie in [0, 1] or be whole numbers in [0, 255] to resize, "
                f"got [{chw.min()}, {chw.max()}]"
            )
        if chw.min() < 0 or chw.max() > 255:
            raise ValueError(f"image values must lie in [0, 255] to resize, got [{chw.min()}, {chw.max()}]")
    pil = PIL.Image.fromarray(np.ascontiguousarray(np.moveaxis(chw, 0, -1)).astype(np.uint8))
    height, width = size_hw
    return np.moveaxis(np.asarray(pil.resize((width, height), resample=resample)), -1, 0)  # (3, H, W)


def _is_unit_float(chw: np.ndarray) -> bool:
    """Floats in [0, 1] that are not whole numbers: the images transformers scales by 255 to resize them."""
    is_float = np.issubdtype(chw.dtype, np.floating)
    return bool(is_float and not np.allclose(chw, chw.astype(np.int64)) and chw.min() >= 0 and chw.max() <= 1)


def center_crop(chw: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Crop the centre (3, h, w) → (3, H, W); an image smaller than the crop is zero-padded first.

    The offsets are transformers': top = (h − H) // 2 (so an odd margin leaves the extra row at the
    bottom), and padding puts ceil(margin / 2) before the image.
    """
    crop_h, crop_w = size_hw
    h, w = chw.shape[-2:]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    if top >= 0 and left >= 0:
        return chw[:, top : top + crop_h, left : left + crop_w]
    new_h, new_w = max(crop_h, h), max(crop_w, w)
    pad_top, pad_left = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    padded = np.zeros((chw.shape[0], new_h, new_w), dtype=chw.dtype)
    padded[:, pad_top : pad_top + h, pad_left : pad_left + w] = chw
    top, left = top + pad_top, left + pad_left
    return padded[:, max(0, top) : min(new_h, top + crop_h), max(0, left) : min(new_w, left + crop_w)]


def _normalize(chw: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(x − mean) / std per channel, in the image's float dtype (float32 for integer images)."""
    if len(mean) != chw.shape[0] or len(std) != chw.shape[0]:
        raise ValueError(f"image_mean/image_std need {chw.shape[0]} values, got {list(mean)} / {list(std)}")
    if not np.issubdtype(chw.dtype, np.floating):
        chw = chw.astype(np.float32)
    mean_arr = np.asarray(mean, dtype=chw.dtype)[:, None, None]
    std_arr = np.asarray(std, dtype=chw.dtype)[:, None, None]
    return (chw - mean_arr) / std_arr


# transformers' defaults where a vision tower's preprocessor_config.json leaves a step out (ImageNet's statistics).
_TOWER_DEFAULTS = {"image_mean": (0.485, 0.456, 0.406), "image_std": (0.229, 0.224, 0.225), "resample": 2}


def tower_image_processor(config: dict[str, Any]) -> AlignImageProcessor:
    """The image processor of a transformers vision tower's preprocessor_config.json (ViT, ConvNeXt, Dinov2...):
    its size, centre crop, rescaling and mean/std, with pixels in [0, 1] before normalising (no ALIGN offset).

    A `shortest_edge` size resizes to a square of that side (before a crop of `crop_size`), and ConvNeXt's
    `crop_pct` to shortest_edge / crop_pct before cropping shortest_edge, as its processor does below 384 px."""
    if not isinstance(config, dict):
        raise ValueError(f"an image processor config must be a JSON object, got {type(config).__name__}")
    size = config.get("size", 224)
    crop = config.get("crop_size")
    do_crop = bool(config.get("do_center_crop", crop is not None))
    if isinstance(size, dict) and "shortest_edge" in size:
        edge = size["shortest_edge"]
        pct = config.get("crop_pct")
        if crop is None and pct and edge < 384:
            crop, size, do_crop = edge, int(edge / pct), True
        else:
            size = edge
    fields_ = dict(
        do_resize=bool(config.get("do_resize", True)),
        size=size,
        resample=config.get("resample", _TOWER_DEFAULTS["resample"]),
        do_center_crop=do_crop,
        crop_size=crop if crop is not None else size,
        do_rescale=bool(config.get("do_rescale", True)),
        rescale_factor=config.get("rescale_factor", 1 / 255),
        rescale_offset=False,
        do_normalize=bool(config.get("do_normalize", True)),
    )
    for key in ("image_mean", "image_std"):
        value = config.get(key, _TOWER_DEFAULTS[key])
        fields_[key] = tuple(value) if isinstance(value, (list, tuple)) else (value,) * 3
    extra = {k: v for k, v in config.items() if k not in ("size", "crop_size", "shortest_edge")}
    return AlignImageProcessor(**fields_, extra={**extra, "image_processor_type": "EfficientNetImageProcessor"})
