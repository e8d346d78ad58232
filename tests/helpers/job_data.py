"""Image files for the everyday-job tests: real photos, an EXIF-rotated JPEG, and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image

EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6  # EXIF orientation 6: rotate 90° clockwise to display (PIL: Transpose.ROTATE_270)


def photo(name: str) -> PIL.Image.Image:
    """A photo from skimage.data ("chelsea", "coffee", "astronaut", "rocket") as an RGB PIL image."""
    import skimage.data

    return PIL.Image.fromarray(getattr(skimage.data, name)())


def write_exif_rotated(path: Path, image: PIL.Image.Image) -> np.ndarray:
    """Save `image` as a JPEG tagged "rotate 90° clockwise"; return the pixels a viewer shows, (H, W, 3)."""
    exif = PIL.Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    image.save(path, exif=exif, quality=95)
    with PIL.Image.open(path) as stored:  # the decoded pixels, before the orientation is applied
        return np.asarray(stored.convert("RGB").transpose(PIL.Image.Transpose.ROTATE_270))


def write_collection(folder: Path) -> dict[str, list[Path]]:
    """A folder of good and bad image files; returns {"good": [...], "bad": [...], "rotated": [exif, png]}.

    Good: two photos (one in a subfolder), an EXIF-rotated JPEG and the same pixels rotated by hand as a
    PNG. Bad: a truncated JPEG, a text file named .jpg, a 0-byte .png. Also a hidden macOS "._" file and a
    notes.txt, which listing a folder must ignore.
    """
    (folder / "sub").mkdir(parents=True)
    good = [folder / "chelsea.jpg", folder / "sub" / "coffee.png"]
    photo("chelsea").save(good[0], quality=95)
    photo("coffee").resize((160, 120)).save(good[1])
    exif_jpeg, by_hand = folder / "rotated_exif.jpg", folder / "rotated_by_hand.png"
    PIL.Image.fromarray(write_exif_rotated(exif_jpeg, photo("astronaut").resize((96, 64)))).save(by_hand)
    truncated, text, empty = folder / "truncated.jpg", folder / "notes_as.jpg", folder / "sub" / "empty.png"
    truncated.write_bytes(good[0].read_bytes()[:4000])
    text.write_text("this is not an image\n")
    empty.write_bytes(b"")
    (folder / "._chelsea.jpg").write_bytes(b"\x00\x05\x16\x07")
    (folder / "notes.txt").write_text("not listed\n")
    return {"good": [*good, exif_jpeg, by_hand], "bad": [truncated, text, empty], "rotated": [exif_jpeg, by_hand]}


def input_sensitive_checkpoint(src: Path, dst: Path) -> Path:
    """A copy of checkpoint `src` whose BatchNorm statistics are measured on real photos, in native format
    with its processor files.

    The tiny test checkpoints' random running statistics swamp the input: every photo gets the same image
    embedding (cosine 1.0000 between a cat and a cup), so a test comparing two images' embeddings would
    pass for any two images. With measured statistics the same photos are far apart (cosine < 0.9).
    """
    import torch

    from align_torch import AlignModel, AlignProcessor

    model = AlignModel.from_pretrained(src)
    processor = AlignProcessor.from_pretrained(src)
    pixels = processor(images=[photo(n) for n in ("chelsea", "coffee", "astronaut", "rocket")])["pixel_values"]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: after one batch, exactly that batch's statistics
        bn.train()  # only the norms: no drop-path while measuring
    with torch.no_grad():
        model.encode_image(pixels)
    model.eval()
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    return dst
