"""The benchmark scripts still run: every variant of bench.py on the tiny preset, in-process, no timings read."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture()
def bench_module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("bench", None)
    import bench

    yield bench
    sys.modules.pop("bench", None)


def test_bench_runs_every_cpu_variant_on_the_tiny_preset(bench_module, tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--preset", "tiny", "--bf16", "--compile", "--compile-backend", "eager", "--iters", "1", "--json", str(out)]
    assert bench_module.main(argv) == 0
    results = json.loads(out.read_text())["results"]
    names = {(r["group"], r["name"]) for r in results}
    for expected in [
        ("image", "align_torch fused"),
        ("image", "align_torch fused channels_last"),
        ("image", "align_torch fused, oneDNN off"),
        ("image", "align_torch fused bf16"),
        ("text captions padded to 64", "align_torch fused (packed)"),
    ]:
        assert expected in names, f"{expected} missing from {sorted(names)}"
    assert any(r["group"] == "train" for r in results)
    fp32 = [r for r in results if r["group"] == "image" and "bf16" not in r["name"]]
    assert all(r["max_rel_diff"] <= 1e-4 for r in fp32), "every fp32 image variant stays within 1e-4 of transformers"


def test_train_variants_filter_keeps_only_the_named_variants(bench_module, tmp_path):
    out = tmp_path / "train.json"
    argv = ["--preset", "tiny", "--groups", "train", "--train-variants", "align_torch", "--iters", "1"]
    assert bench_module.main([*argv, "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["name"] for r in results] == ["align_torch fp32"]
    assert results[0]["vs_transformers_fp32"] is None, "no transformers variant ran, so there is no ratio"
