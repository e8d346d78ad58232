"""One AlignTokenizer shared by many threads gives every call its own padding and truncation.

The backend `tokenizers.Tokenizer` keeps padding/truncation as state on the object; a tokenizer that set
that state per call returned another thread's lengths. Each call here is checked against the same call
made single-threaded beforehand.
"""

from __future__ import annotations

import random
import sys
import threading

import pytest

from align_torch.preprocess.tokenizer import AlignTokenizer
from tests.helpers.proc_data import ALIGN_BASE_PREPROCESSOR, texts, write_checkpoint

THREADS = 8
CALLS_PER_THREAD = 1000
SETTINGS = [
    {"padding": "max_length", "truncation": True, "max_length": 64},
    {"padding": "max_length", "truncation": True, "max_length": 8},
    {"padding": "max_length", "truncation": True, "max_length": 23},
    {"padding": True, "truncation": True, "max_length": 16},
    {"padding": True, "truncation": False},
    {"padding": False, "truncation": True, "max_length": 5},
    {"padding": False, "truncation": False},
    {"padding": "longest", "truncation": "longest_first", "max_length": 40},
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("tok"), ALIGN_BASE_PREPROCESSOR)


@pytest.fixture(scope="module")
def tokenizer(folder):
    return AlignTokenizer.from_pretrained(folder)


def _call(tokenizer: AlignTokenizer, batch: list[str], settings: dict, pair: bool) -> dict:
    pairs = [t[::-1] for t in batch] if pair else None
    out = tokenizer(batch, pairs, return_tensors=None, **settings)
    return {k: out[k] for k in ("input_ids", "token_type_ids", "attention_mask")}


def test_threads_with_mixed_settings_get_their_own_outputs(tokenizer, folder):
    pool = [t for t in texts(600, seed=11) if len(t) < 100]  # short texts: many quick calls
    rng = random.Random(5)
    # (texts, settings, pair?) per call; batches of 1-4 texts so calls are short and interleave often. The
    # threads draw their calls from 400 distinct ones, so the single-threaded reference stays cheap.
    distinct = [
        (rng.sample(pool, rng.randint(1, 4)), rng.randrange(len(SETTINGS)), rng.random() < 0.2) for _ in range(400)
    ]
    # The reference: one fresh tokenizer per setting, used by one thread, so nothing one setting leaves
    # behind (state, or a cached backend) can reach another.
    fresh = [AlignTokenizer.from_pretrained(folder) for _ in SETTINGS]
    expected = [_call(fresh[s], batch, SETTINGS[s], pair) for batch, s, pair in distinct]
    calls = [rng.randrange(len(distinct)) for _ in range(THREADS * CALLS_PER_THREAD)]
    # The mix must hold calls whose outputs differ in length, or a leak between them could not show.
    assert len({len(e["input_ids"][0]) for e in expected}) > 10

    wrong: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in calls[t * CALLS_PER_THREAD : (t + 1) * CALLS_PER_THREAD]:
                batch, s, pair = distinct[i]
                if _call(tokenizer, batch, SETTINGS[s], pair) != expected[i]:
                    wrong.append(i)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    # A short switch interval: threads interleave more often, and a thread returning from the Rust call does
    # not wait 5 ms for the interpreter each time (which made this test take minutes on 2 busy cores).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]
    assert not wrong, f"{len(wrong)} of {len(calls)} calls returned another call's output, e.g. {distinct[wrong[0]]}"


def test_encode_between_padded_calls_is_unpadded(tokenizer):
    """`encode` never pads, and a padded call after it still pads: neither leaves state for the other."""
    tokenizer(["a cat"], padding="max_length", max_length=32)
    ids = tokenizer.encode("a cat")
    assert len(ids) == 4
    assert len(tokenizer(["a cat"], padding="max_length", max_length=32).input_ids[0]) == 32


def test_pickled_tokenizer_gives_the_same_ids_for_spawned_data_loader_workers(tokenizer):
    """DataLoader workers started by spawn (macOS's default; finetune's --workers defaults to more than 0)
    get a pickled copy of the collate function's tokenizer: it pickles, and encodes as the original."""
    import pickle

    tokenizer(["warm the cache"], padding="max_length", max_length=16)
    copy = pickle.loads(pickle.dumps(tokenizer))
    for settings in SETTINGS:
        assert _call(copy, ["a cat", "two dogs on a beach"], settings, False) == _call(
            tokenizer, ["a cat", "two dogs on a beach"], settings, False
        )
