"""Token parity of AlignTokenizer with transformers' BertTokenizer on 1,200 varied strings.

In transformers 5 `BertTokenizer` is the `tokenizers`-backed class (what AutoTokenizer and AlignProcessor
build from align-base's tokenizer_config.json); the pure-Python one is `BertTokenizerLegacy`.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from align_torch.preprocess.tokenizer import AlignTokenizer, read_vocab
from tests.helpers.proc_data import ALIGN_BASE_PREPROCESSOR, ALIGN_BASE_TOKENIZER_CONFIG, texts, write_checkpoint

TEXTS = texts(1200)
FIELDS = ("input_ids", "attention_mask", "token_type_ids")
# What the processor asks of the tokenizer: every text padded and truncated to 64 tokens, as tensors.
PT64 = {"padding": "max_length", "truncation": True, "return_tensors": "pt"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("align_tok"), ALIGN_BASE_PREPROCESSOR)


@pytest.fixture(scope="module")
def ours(folder):
    return AlignTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def ref(folder):
    return transformers.BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True, model_max_length=64)


def _assert_same(got, expected, texts_):
    for field in FIELDS:
        for i, text in enumerate(texts_):
            assert list(got[field][i]) == list(expected[field][i]), f"{field} differs for {text!r}"


def test_processor_settings_match_bert_tokenizer_max_length_64(ours, ref):
    got = ours(TEXTS, **PT64)
    expected = ref(TEXTS, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    for field in FIELDS:
        assert got[field].dtype == torch.int64 and got[field].shape == (len(TEXTS), 64)
        assert torch.equal(got[field], expected[field]), field
    # The strings exercise what they claim: truncated rows, [UNK]s, literal specials kept whole, empties.
    lengths = got["attention_mask"].sum(1)
    assert (lengths == 64).sum() > 100 and (lengths == 2).sum() >= 3
    assert (got["input_ids"] == 100).any(1).sum() > 100
    cls_inside = (got["input_ids"][:, 1:] == ours.cls_token_id) & (got["attention_mask"][:, 1:] == 1)
    assert cls_inside.any(1).sum() > 10


def test_matches_what_transformers_builds_from_align_base_config(folder, ours):
    """AutoTokenizer reads tokenizer_config.json (tokenizer_class BertTokenizer, model_max_length 64)."""
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    assert type(auto).__name__ == "BertTokenizer"
    expected = auto(TEXTS[:400], padding="max_length", truncation=True, return_tensors="pt")
    got = ours(TEXTS[:400], **PT64)
    for field in FIELDS:
        assert torch.equal(got[field], expected[field]), field


@pytest.mark.parametrize("padding", [True, "longest"])
def test_padding_longest_matches(ours, ref, padding):
    for start in range(0, 400, 16):
        batch = TEXTS[start : start + 16]
        expected = ref(batch, padding=padding, truncation=True, max_length=64, return_tensors="pt")
        got = ours(batch, padding=padding, truncation=True, return_tensors="pt")
        for field in FIELDS:
            assert torch.equal(got[field], expected[field]), (start, field)


def test_no_padding_no_truncation_matches(ours, ref):
    expected = ref(TEXTS, padding=False, truncation=False)
    got = ours(TEXTS, padding=False, truncation=False, return_tensors=None)
    _assert_same(got, expected, TEXTS)
    assert max(len(ids) for ids in got["input_ids"]) > 200  # nothing was cut


def test_max_length_keyword_matches(ours, ref):
    expected = ref(TEXTS[:300], padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    got = ours(TEXTS[:300], max_length=16, **PT64)
    assert got["input_ids"].shape == (300, 16)
    assert torch.equal(got["input_ids"], expected["input_ids"])


def test_pairs_match(ours, ref):
    first, second = TEXTS[:300], TEXTS[300:600]
    expected = ref(first, second, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    got = ours(first, second, **PT64)
    for field in FIELDS:
        assert torch.equal(got[field], expected[field]), field
    assert (got["token_type_ids"] == 1).any()


@pytest.mark.parametrize(
    "options",
    [{"do_lower_case": False}, {"strip_accents": False}, {"tokenize_chinese_chars": False}],
    ids=["cased", "keep_accents", "no_chinese_split"],
)
def test_tokenizer_config_fields_are_honoured(tmp_path, options):
    folder = write_checkpoint(tmp_path, ALIGN_BASE_PREPROCESSOR, {**ALIGN_BASE_TOKENIZER_CONFIG, **options})
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    ours = AlignTokenizer.from_pretrained(folder)
    default = AlignTokenizer.from_pretrained(write_checkpoint(tmp_path / "default", ALIGN_BASE_PREPROCESSOR))
    sample = TEXTS[:400]
    expected = ref(sample, padding="max_length", truncation=True, return_tensors="pt")
    got = ours(sample, **PT64)
    assert torch.equal(got["input_ids"], expected["input_ids"])
    assert not torch.equal(got["input_ids"], default(sample, **PT64)["input_ids"])  # the option changed something


def test_tokenizer_json_is_loaded_directly(tmp_path, ref):
    """A folder with only tokenizer.json (no vocab.txt) tokenizes the same."""
    ref.save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").unlink(missing_ok=True)
    assert (tmp_path / "tokenizer.json").is_file()
    ours = AlignTokenizer.from_pretrained(tmp_path)
    assert ours.from_tokenizer_json
    expected = ref(TEXTS[:300], padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    assert torch.equal(ours(TEXTS[:300], **PT64)["input_ids"], expected["input_ids"])


def test_special_tokens_stay_whole_only_when_written_exactly(ours):
    ids = ours.encode("a [CLS] b [MASK] [cls]")
    assert ids.count(ours.cls_token_id) == 2  # the template's [CLS] and the literal one
    assert ids.count(103) == 1  # [MASK]
    assert len(ids) > 7  # "[cls]" is split into "[", "cl", ... as in transformers


@pytest.mark.parametrize("skip", [False, True])
def test_decode_matches(ours, ref, skip):
    ids = ours(TEXTS[:300], **PT64)["input_ids"]
    assert ours.batch_decode(ids, skip_special_tokens=skip) == ref.batch_decode(ids, skip_special_tokens=skip)
    assert ours.decode(ids[3], skip_special_tokens=True) == "a photo of a cat"


def test_legacy_python_tokenizer_differs_only_on_capital_sigma(folder, ours):
    """transformers' pure-Python BertTokenizerLegacy lowercases a word-final Σ to ς (Python's str.lower);
    the Rust normaliser (ours, and transformers' default) gives σ. Everything else agrees."""
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    legacy = BertTokenizerLegacy(str(folder / "vocab.txt"), do_lower_case=True, model_max_length=64)
    expected = legacy(TEXTS, padding="max_length", truncation=True, max_length=64)["input_ids"]
    got = ours(TEXTS, **PT64)["input_ids"].tolist()
    differing = [text for text, a, b in zip(TEXTS, got, expected, strict=True) if a != b]
    assert differing and all("Σ" in text for text in differing)


def test_read_vocab_keeps_line_numbers(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n\n a\nb\n", encoding="utf-8")
    assert read_vocab(tmp_path / "vocab.txt") == {"[PAD]": 0, "": 1, " a": 2, "b": 3}


def test_save_files_round_trip(folder, ours, tmp_path):
    files = ours.to_files()
    assert files["vocab.txt"] == (folder / "vocab.txt").read_text(encoding="utf-8")
    assert json.loads(files["tokenizer_config.json"]) == ALIGN_BASE_TOKENIZER_CONFIG
    for name, contents in files.items():
        (tmp_path / name).write_text(contents, encoding="utf-8")
    again = AlignTokenizer.from_pretrained(tmp_path)
    assert torch.equal(again(TEXTS[:50], **PT64)["input_ids"], ours(TEXTS[:50], **PT64)["input_ids"])


@pytest.mark.parametrize(
    "bad,error,words",
    [([], ValueError, "empty"), (3, TypeError, "int"), (["ok", None], TypeError, "list")],
)
def test_bad_text_raises(ours, bad, error, words):
    with pytest.raises(error, match=words):
        ours(bad)


def test_ragged_tensors_are_refused(ours):
    with pytest.raises(ValueError, match="different lengths"):
        ours(["a cat", "a photo of a cat"], padding=False, return_tensors="pt")
