"""Deterministic test data for the processor tests: a BERT-like WordPiece vocab, varied texts, checkpoint files.

There is no internet in CI, so instead of bert-base-uncased's vocab.txt we build one with the same layout
([PAD] 0, [unused*], [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, then characters, words and `##` pieces)
that covers every script the texts below use, so both tokenizers exercise WordPiece splits, [UNK] and
the Chinese-character rule rather than mapping everything to [UNK].
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# align-base's preprocessor_config.json, as in the kakaobrain/align-base repository.
ALIGN_BASE_PREPROCESSOR = {
    "crop_size": {"height": 289, "width": 289},
    "do_center_crop": True,
    "do_normalize": False,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "EfficientNetImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "include_top": False,
    "resample": 2,
    "rescale_factor": 0.00784313725490196,
    "rescale_offset": True,
    "size": {"height": 346, "width": 346},
}

# A small checkpoint's values: every flag on, odd sizes, so a wrong default or a skipped step shows.
SMALL_PREPROCESSOR = {
    **ALIGN_BASE_PREPROCESSOR,
    "crop_size": {"height": 64, "width": 64},
    "size": {"height": 72, "width": 72},
    "do_normalize": True,
    "image_mean": [0.48, 0.46, 0.41],
    "image_std": [0.27, 0.26, 0.28],
    "include_top": True,
}

ALIGN_BASE_TOKENIZER_CONFIG = {
    "cls_token": "[CLS]",
    "do_basic_tokenize": True,
    "do_lower_case": True,
    "mask_token": "[MASK]",
    "model_max_length": 64,
    "never_split": None,
    "pad_token": "[PAD]",
    "processor_class": "AlignProcessor",
    "sep_token": "[SEP]",
    "strip_accents": None,
    "tokenize_chinese_chars": True,
    "tokenizer_class": "BertTokenizer",
    "unk_token": "[UNK]",
}

SPECIAL_TOKENS_MAP = {
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
    "pad_token": "[PAD]",
    "sep_token": "[SEP]",
    "unk_token": "[UNK]",
}

WORDS = (
    "a an the of on in at with and or to from by for is are was were be been this that these those "
    "photo picture image painting drawing sketch cat dog bird horse man woman child people person group "
    "car bus train plane boat bike street road city building house room kitchen table chair bed window "
    "red blue green yellow black white brown small large big little old young new happy sitting standing "
    "running walking playing eating holding looking next front top side near under over two three four "
    "many some one sky water sea beach mountain tree grass flower field snow rain sun night day light "
    "play walk run eat look hold sit stand jump fly swim cook read write sing dance smile laugh "
    "cafe naive resume senor uber facade jalapeno zurich munchen paris london tokyo moscow athens "
    "über café naïve señor jalapeño"
).split()
SUFFIXES = "s es ed ing er ers est ly ness ful less able ion ions ment y ie al ic ish ous".split()


def _char_ranges() -> list[str]:
    chars = [chr(c) for c in range(33, 127)]  # printable ASCII without space
    chars += [chr(c) for c in range(0xA1, 0x180) if chr(c).isprintable()]  # Latin-1 and Latin Extended-A
    chars += [chr(c) for c in range(0x391, 0x3CA) if chr(c).isprintable()]  # Greek
    chars += [chr(c) for c in range(0x410, 0x450)]  # Cyrillic
    chars += [chr(c) for c in range(0x627, 0x64B)]  # Arabic letters
    chars += [chr(c) for c in range(0x4E00, 0x4E00 + 400)]  # the first CJK ideographs
    chars += [chr(c) for c in range(0x3041, 0x3097)]  # Hiragana (not "Chinese" for BERT: joins words)
    return chars


def build_vocab() -> list[str]:
    """Return the vocab lines, id = line number; deterministic."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    seen = set(vocab)

    def add(token: str) -> None:
        if token not in seen:
            seen.add(token)
            vocab.append(token)

    chars = _char_ranges()
    for c in chars:
        add(c)
    for c in chars:
        add("##" + c)
    for w in WORDS:
        add(w)
    for s in SUFFIXES:
        add("##" + s)
    # Subword pieces of the words so WordPiece splits unknown compounds into several pieces.
    for w in WORDS:
        for cut in range(2, len(w)):
            add("##" + w[cut:])
    return vocab


def write_vocab(path: Path) -> Path:
    path.write_text("\n".join(build_vocab()) + "\n", encoding="utf-8")
    return path


def write_checkpoint(folder: Path, preprocessor: dict, tokenizer_config: dict | None = None) -> Path:
    """Write the processor files of an ALIGN checkpoint into `folder` (the files align-base ships)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config or ALIGN_BASE_TOKENIZER_CONFIG))
    (folder / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS_MAP))
    write_vocab(folder / "vocab.txt")
    return folder


_SCRIPTS = {
    "latin": "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœšžÀÉÎÕÜ",
    "greek": "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΣΩάέήίόύώ",
    "cyrillic": "абвгдежзийклмнопрстуфхцчшщъыьэюяАБВГДЁЖЯё",
    "cjk": "".join(chr(c) for c in range(0x4E00, 0x4E00 + 500, 7)) + "日本語中文漢字",
    "kana": "あいうえおかきくけこさしすせそ",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "emoji": "😀🐱🐶🚀🌍❤️👍🏽🇰🇷",
    "control": "\x00\x01\x07\x0b\x0c\x1b\x7f\t\n\r\u200b\u200d\ufeff\ufffd\u00ad\u0301\u2028",
    "punct": ".,;:!?'\"()[]{}<>-_/\\@#$%^&*~`|+=",
    "space": " \u00a0\u3000\u2003",
}
_SPECIALS = ["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "[cls]", "[Mask]", "[ CLS ]", "[CLS", "CLS]"]


def _caption(rng: random.Random) -> str:
    n = rng.randint(3, 14)
    words = [rng.choice(WORDS) for _ in range(n)]
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    if rng.random() < 0.3:
        words = [w.upper() if rng.random() < 0.2 else w for w in words]
    return " ".join(words) + rng.choice(["", ".", "!", " ?", "..."])


def _script_word(rng: random.Random, script: str) -> str:
    pool = _SCRIPTS[script]
    return "".join(rng.choice(pool) for _ in range(rng.randint(1, 8)))


def texts(n: int = 1200, seed: int = 0) -> list[str]:
    """`n` varied strings: captions mixed with other scripts, control characters, specials, edge cases."""
    rng = random.Random(seed)
    fixed = [
        "",
        " ",
        "\n\t ",
        "a photo of a cat",
        "[CLS]",
        "[MASK]",
        "a [MASK] of a cat",
        "[CLS] a photo [SEP] of [PAD] a [UNK] dog",
        "x" * 100,
        "x" * 101,
        "é" * 100,
        "é" * 101,
        "a" + "b" * 150 + " cat",
        " ".join(["cat"] * 200),
        " ".join(["photo"] * 62),
        " ".join(["photo"] * 63),
        "日本語のテキスト",
        "Ünïcödé ÀÉÎÕÜ ñ",
        "\x00\x00\x00",
        "😀😀😀",
    ]
    out = list(fixed)
    scripts = list(_SCRIPTS)
    while len(out) < n:
        kind = rng.random()
        if kind < 0.35:
            pieces = [_caption(rng)]
            for _ in range(rng.randint(0, 3)):
                pieces.insert(rng.randint(0, len(pieces)), _script_word(rng, rng.choice(scripts)))
            text = rng.choice([" ", "", ", "]).join(pieces)
        elif kind < 0.6:
            text = " ".join(_script_word(rng, rng.choice(scripts)) for _ in range(rng.randint(1, 12)))
        elif kind < 0.7:
            text = _caption(rng).replace(" ", f" {rng.choice(_SPECIALS)} ", rng.randint(1, 3))
        elif kind < 0.8:
            # Far over 64 tokens, so truncation decides the ids.
            text = " ".join(_caption(rng) for _ in range(rng.randint(6, 25)))
        elif kind < 0.88:
            # One very long word: over 100 characters becomes a single [UNK].
            length = rng.choice([99, 100, 101, 130, 400])
            text = _caption(rng) + " " + "".join(rng.choice("abcdefghij") for _ in range(length))
        else:
            # Characters drawn from everything, glued together without spaces.
            pool = "".join(_SCRIPTS.values()) + "abcdefghijklmnopqrstuvwxyz0123456789"
            text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 60)))
        out.append(text)
    return out
