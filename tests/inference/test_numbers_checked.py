"""The one loader's checks: a relative --model-class is a one-line refusal, not a TypeError from importlib."""

from __future__ import annotations

from tests.helpers.cli import run_cli


def test_model_class_relative_module_is_a_one_line_refusal(model_dir, tmp_path):
    (tmp_path / "t.txt").write_text("a cat\n")
    status, _, err = run_cli(
        "embed-text",
        tmp_path / "t.txt",
        "--out",
        tmp_path / "o.safetensors",
        "--model",
        model_dir,
        "--model-class",
        ".relative:Cls",
    )
    assert status == 2 and "--model-class '.relative:Cls'" in err and "relative" in err, err
    assert len(err.strip().splitlines()) == 1 and "TypeError" not in err
