"""BERT WordPiece tokenizer for ALIGN, built with the `tokenizers` library (no transformers import).

The pipeline is the one transformers 5's `BertTokenizer` assembles from vocab.txt, so the ids match it:
BertNormalizer (clean text, space around CJK characters, lowercase, accents stripped when lowercasing
unless strip_accents says otherwise), BertPreTokenizer, WordPiece (`##`, words over 100 characters become
[UNK]), `[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]`, and the five special tokens registered un-normalised so
a literal "[CLS]" in a caption stays one token (while "[cls]" does not).
"""

from __future__ import annotations

import json
import numbers
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken, Encoding, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from ..checkpoint.config_files import ConfigFileError, field_error, read_json_object
from ..defaults import TEXT_LENGTH
from .image_processing import BatchFeature

SPECIAL_TOKEN_KEYS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
DEFAULT_SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
# transformers writes a huge number when a checkpoint sets no limit: then ALIGN's own length (defaults.TEXT_LENGTH).
_NO_LIMIT = 10**12
# Configured backend copies kept per (truncation, padding, length); callers rarely use more than a few.
_CONFIGURED_CACHE = 16


def read_vocab(path: str | Path) -> dict[str, int]:
    """vocab.txt → {token: line number}, reading lines as transformers does (only the newline stripped)."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline ends the last token; it is not an empty token
    return {token: index for index, token in enumerate(lines)}


def _special_token(value: Any, key: str) -> str:
    # special_tokens_map.json may store a token as a string or as an AddedToken dict {"content": ...}.
    content = value.get("content") if isinstance(value, dict) else value
    if not isinstance(content, str) or not content:
        raise ValueError(f"field {key!r} must be a token string or {{'content': token}}, got {value!r}")
    return content


def _options(config: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer_config.json fields AlignTokenizer uses, type-checked; a bad one raises naming it."""
    options = {
        "do_lower_case": config.get("do_lower_case", True),
        "strip_accents": config.get("strip_accents"),
        "tokenize_chinese_chars": config.get("tokenize_chinese_chars", True),
        "model_max_length": config.get("model_max_length", TEXT_LENGTH),
    }
    for key in ("do_lower_case", "tokenize_chinese_chars"):
        if not isinstance(options[key], bool):
            raise ValueError(f"field {key!r} must be true or false, got {options[key]!r}")
    if options["strip_accents"] is not None and not isinstance(options["strip_accents"], bool):
        raise ValueError(f"field 'strip_accents' must be true, false or null, got {options['strip_accents']!r}")
    limit = options["model_max_length"]
    if isinstance(limit, float) and limit >= _NO_LIMIT:
        limit = options["model_max_length"] = int(limit)  # transformers writes 1e30 for "no limit"
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
        raise ValueError(f"field 'model_max_length' must be an int >= 2, got {limit!r}")
    return options


class AlignTokenizer:
    """Texts → `input_ids`, `token_type_ids`, `attention_mask`, called as transformers' BertTokenizerFast (no
    padding, truncation or tensors unless asked); ids → text and tokens (`decode`, `convert_ids_to_tokens`, ...)."""

    def __init__(
        self,
        vocab: dict[str, int] | None = None,
        *,
        tokenizer: Tokenizer | None = None,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        model_max_length: int = TEXT_LENGTH,
        special_tokens: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        """Build from a WordPiece `vocab`, or wrap a ready `tokenizer` (a tokenizer.json) as it is.

        `config` is the tokenizer_config.json as read; it is kept so save_pretrained writes back its other keys.
        """
        self.special_tokens = {**DEFAULT_SPECIAL_TOKENS, **(special_tokens or {})}
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.model_max_length = model_max_length if model_max_length < _NO_LIMIT else TEXT_LENGTH
        self.config = dict(config or {})
        self.from_tokenizer_json = tokenizer is not None
        if tokenizer is None:
            if vocab is None:
                raise ValueError("AlignTokenizer needs a vocab or a tokenizers.Tokenizer")
            tokenizer = self._build(vocab)
        else:
            # Our own copy, without the padding/truncation a tokenizer.json may carry: the caller's object is
            # left alone and every call states its own settings.
            tokenizer = Tokenizer.from_str(tokenizer.to_str())
            tokenizer.no_padding()
            tokenizer.no_truncation()
        self._tokenizer = tokenizer
        # padding/truncation are state on a tokenizers.Tokenizer, so setting them per call on one shared object
        # lets concurrent calls see each other's settings. Each setting gets its own copy, configured once and
        # never changed again; the lock only guards the cache.
        self._configured: OrderedDict[tuple, Tokenizer] = OrderedDict()
        self._configured_lock = threading.Lock()
        for key in ("pad_token", "cls_token", "sep_token", "unk_token"):
            if tokenizer.token_to_id(self.special_tokens[key]) is None:
                raise ValueError(f"{key} {self.special_tokens[key]!r} is not in the vocabulary")
        self.pad_token_id: int = tokenizer.token_to_id(self.special_tokens["pad_token"])
        self.cls_token_id: int = tokenizer.token_to_id(self.special_tokens["cls_token"])
        self.sep_token_id: int = tokenizer.token_to_id(self.special_tokens["sep_token"])

    def __getstate__(self) -> dict:
        """Picklable (DataLoader workers under the spawn start method, macOS's default, get a copy): the lock
        and the cache of configured copies stay behind and are made afresh."""
        state = self.__dict__.copy()
        del state["_configured_lock"]
        state["_configured"] = OrderedDict()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._configured_lock = threading.Lock()

    def _build(self, vocab: dict[str, int]) -> Tokenizer:
        unk, cls, sep = (self.special_tokens[k] for k in ("unk_token", "cls_token", "sep_token"))
        for token in (unk, cls, sep):
            if token not in vocab:
                raise ValueError(f"special token {token!r} is not in the vocabulary")
        tok = Tokenizer(WordPiece(vocab, unk_token=unk, continuing_subword_prefix="##", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=self.tokenize_chinese_chars,
            strip_accents=self.strip_accents,  # None: follow lowercase, as original BERT
            lowercase=self.do_lower_case,
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0",
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
        )
        # Matched on the raw text before normalisation: "[CLS]" is one token, "[cls]" is "[", "cl", ...
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in self.special_tokens.values()])
        return tok

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> AlignTokenizer:
        """Load from a checkpoint folder: tokenizer.json if present, else vocab.txt, with tokenizer_config.json."""
        folder = Path(folder)
        config_path, map_path = folder / "tokenizer_config.json", folder / "special_tokens_map.json"
        config = read_json_object(config_path) if config_path.is_file() else {}
        try:
            options = _options(config)
            special = {k: _special_token(v, k) for k, v in config.items() if k in SPECIAL_TOKEN_KEYS and v is not None}
        except ValueError as e:
            raise field_error(config_path, e) from None
        tokens_map = read_json_object(map_path) if map_path.is_file() else {}
        try:
            special |= {k: _special_token(v, k) for k, v in tokens_map.items() if k in SPECIAL_TOKEN_KEYS}
        except ValueError as e:
            raise field_error(map_path, e) from None
        options |= {"special_tokens": special, "config": config}
        if (folder / "tokenizer.json").is_file():
            try:
                backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception as e:  # the Rust loader raises plain Exception for any bad file
                raise ConfigFileError(f"{str(folder / 'tokenizer.json')!r} is not a tokenizers file: {e}") from None
            return cls(tokenizer=backend, **options)
        if not (folder / "vocab.txt").is_file():
            raise FileNotFoundError(f"{folder} has neither tokenizer.json nor vocab.txt")
        try:
            vocab = read_vocab(folder / "vocab.txt")
        except UnicodeDecodeError as e:
            raise ConfigFileError(f"{str(folder / 'vocab.txt')!r} is not UTF-8 text (byte {e.start})") from None
        return cls(vocab, **options)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer`, without padding or truncation (__call__ uses configured copies)."""
        return self._tokenizer

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = None,
        return_token_type_ids: bool | None = None,
    ) -> BatchFeature:
        """Tokenize one text or a batch, with transformers' `BertTokenizerFast.__call__` contract.

        Without `return_tensors`, plain lists (one flat list per field for a single string); "pt" torch and
        "np" numpy int64 arrays (N, L), N = 1 for a single string. padding: False/"do_not_pad" (default),
        True/"longest" (to the longest text), "max_length" (to max_length, else model_max_length = 64).
        truncation: True/"longest_first"/"only_first"/"only_second" cut to max_length (else model_max_length)
        including [CLS]/[SEP]; None (default) truncates only when max_length is given without padding, as
        transformers does. `return_attention_mask` / `return_token_type_ids` False leave that field out.
        """
        texts = _as_texts(text, "text")
        pairs = None if text_pair is None else _as_texts(text_pair, "text_pair")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(pairs)} text_pairs")
        if truncation is None:  # transformers: a max_length without padding means truncate to it
            truncation = max_length is not None and padding in (False, "do_not_pad", None)
        encodings = self._encode(texts, pairs, padding, truncation, max_length, add_special_tokens)
        columns = {"input_ids": [e.ids for e in encodings]}
        if return_token_type_ids is not False:
            columns["token_type_ids"] = [e.type_ids for e in encodings]
        if return_attention_mask is not False:
            columns["attention_mask"] = [e.attention_mask for e in encodings]
        return _as_batch(columns, single=isinstance(text, str), return_tensors=return_tensors)

    def _encode(
        self,
        texts: list[str],
        pairs: list[str] | None,
        padding: bool | str,
        truncation: bool | str,
        max_length: int | None,
        add_special_tokens: bool = True,
    ) -> list[Encoding]:
        limit = self.model_max_length if max_length is None else max_length
        if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 2:
            raise ValueError(f"max_length must be an int >= 2 (room for [CLS] and [SEP]), got {limit!r}")
        limit = int(limit)
        if truncation in (True, "longest_first", "only_first", "only_second"):
            trunc = "longest_first" if truncation is True else truncation
        elif truncation in (False, "do_not_truncate", None):
            trunc = None
        else:
            raise ValueError(f"truncation must be True, False or a strategy name, got {truncation!r}")
        if padding == "max_length":
            pad_to: int | None = limit
        elif padding in (True, "longest"):
            pad_to = None
        elif padding in (False, "do_not_pad", None):
            pad_to = -1
        else:
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")
        if not isinstance(add_special_tokens, bool):
            raise ValueError(f"add_special_tokens must be True or False, got {add_special_tokens!r}")
        tok = self._configured_backend(trunc, limit if trunc else None, pad_to)
        inputs = texts if pairs is None else list(zip(texts, pairs, strict=True))
        try:
            return tok.encode_batch(inputs, add_special_tokens=add_special_tokens)
        except TypeError:
            _check_utf8(texts, "text")
            _check_utf8(pairs or [], "text_pair")
            raise

    def _configured_backend(self, truncation: str | None, limit: int | None, pad_to: int | None) -> Tokenizer:
        """A backend copy set to truncate to `limit` with `truncation` (None: never) and pad to `pad_to`
        (None: the longest text, -1: no padding); made once per setting, then only read."""
        key = (truncation, limit, pad_to)
        with self._configured_lock:
            tok = self._configured.get(key)
            if tok is not None:
                self._configured.move_to_end(key)
                return tok
        tok = Tokenizer.from_str(self._tokenizer.to_str())
        if truncation is not None:
            tok.enable_truncation(limit, strategy=truncation)
        if pad_to != -1:
            tok.enable_padding(
                length=pad_to, pad_id=self.pad_token_id, pad_token=self.special_tokens["pad_token"], pad_type_id=0
            )
        with self._configured_lock:
            tok = self._configured.setdefault(key, tok)
            while len(self._configured) > _CONFIGURED_CACHE:
                self._configured.popitem(last=False)
        return tok

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """One text → ids, without padding or truncation."""
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        """One text → its WordPiece tokens (without [CLS]/[SEP] unless asked), as transformers' `tokenize`."""
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).tokens

    def decode(self, ids: int | Sequence[int] | torch.Tensor | np.ndarray, skip_special_tokens: bool = False) -> str:
        """ids (a list, a 1-D tensor or array, or one id) → text (lowercased, accents gone: the normaliser is not
        undone)."""
        return self._tokenizer.decode(_id_list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, batch: Sequence[Sequence[int]] | torch.Tensor | np.ndarray, skip_special_tokens: bool = False
    ) -> list[str]:
        """Rows of ids → texts."""
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in _rows(batch)]

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int] | torch.Tensor | np.ndarray, skip_special_tokens: bool = False
    ) -> str | list[str]:
        """One id → its token; a list (tensor, array) of ids → their tokens, e.g. to label an attention map."""
        single = _is_one_id(ids)
        special = (
            {self._tokenizer.token_to_id(t) for t in self.special_tokens.values()} if skip_special_tokens else set()
        )
        tokens = [self._id_to_token(i) for i in _id_list(ids) if i not in special]
        return tokens[0] if single and tokens else tokens

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """One token → its id; a list → their ids. A token not in the vocabulary is [UNK]'s id."""
        unk = self._tokenizer.token_to_id(self.special_tokens["unk_token"])
        if isinstance(tokens, str):
            found = self._tokenizer.token_to_id(tokens)
            return unk if found is None else found
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def _id_to_token(self, i: int) -> str:
        token = self._tokenizer.id_to_token(i)
        if token is None:
            raise ValueError(f"token id {i} is not in the vocabulary (size {self.vocab_size})")
        return token

    def to_files(self, with_tokenizer_json: bool = False) -> dict[str, str]:
        """{file name: contents} for tokenizer_config.json, special_tokens_map.json, vocab.txt, and tokenizer.json
        when loaded from one or asked for."""
        config = dict(self.config)
        config.setdefault("tokenizer_class", "BertTokenizer")
        config.update(
            do_lower_case=self.do_lower_case,
            strip_accents=self.strip_accents,
            tokenize_chinese_chars=self.tokenize_chinese_chars,
            model_max_length=self.model_max_length,
            **self.special_tokens,
        )
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        files = {
            "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
            "special_tokens_map.json": json.dumps(self.special_tokens, indent=2, ensure_ascii=False) + "\n",
            "vocab.txt": "".join(token + "\n" for token in sorted(vocab, key=vocab.__getitem__)),
        }
        if self.from_tokenizer_json or with_tokenizer_json:
            files["tokenizer.json"] = self._tokenizer.to_str(pretty=True)
        return files


def _as_batch(columns: dict[str, list[list[int]]], single: bool, return_tensors: str | None) -> BatchFeature:
    """Token columns as transformers returns them: lists (flat for a single text), or (N, L) int64 tensors."""
    if return_tensors is None:
        return BatchFeature({k: v[0] if single else v for k, v in columns.items()})
    if return_tensors not in ("pt", "np"):
        raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
    lengths = {len(ids) for ids in columns["input_ids"]}
    if len(lengths) > 1:
        raise ValueError(
            f"texts have different lengths {sorted(lengths)} and cannot form one tensor; "
            "use padding=True or 'max_length', or return_tensors=None"
        )
    if return_tensors == "np":
        return BatchFeature({k: np.array(v, dtype=np.int64).reshape(len(v), -1) for k, v in columns.items()})
    return BatchFeature({k: torch.tensor(v, dtype=torch.int64).reshape(len(v), -1) for k, v in columns.items()})


def _is_one_id(ids: Any) -> bool:
    return isinstance(ids, numbers.Integral) or (isinstance(ids, (torch.Tensor, np.ndarray)) and ids.ndim == 0)


def _id_list(ids: Any) -> list[int]:
    """One id, a sequence, or a 0-/1-D tensor or array of ids → a list of ints."""
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        if ids.ndim > 1:
            raise ValueError(f"expected one row of ids, got shape {tuple(ids.shape)}; use batch_decode for rows")
        return [int(i) for i in ids.reshape(-1).tolist()]
    if isinstance(ids, numbers.Integral):
        return [int(ids)]
    return [int(i) for i in ids]


def _rows(batch: Any) -> list[Any]:
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        if batch.ndim != 2:
            raise ValueError(f"batch_decode expects rows of ids (2-D), got shape {tuple(batch.shape)}")
        return list(batch.tolist())
    return list(batch)


def _as_texts(text: str | Sequence[str], name: str) -> list[str]:
    if isinstance(text, str):
        return [text]
    if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
        if len(text) == 0:
            raise ValueError(f"{name} is an empty list; pass at least one string")
        return list(text)
    raise TypeError(f"{name} must be a string or a list of strings, got {type(text).__name__}")


def _check_utf8(texts: list[str], name: str) -> None:
    """Name the text the backend cannot take: a lone surrogate (e.g. from a badly decoded file) is not Unicode."""
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{name}[{i}] is not valid Unicode: {e.reason} at character {e.start}") from None
