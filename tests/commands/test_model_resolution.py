"""A model reference is resolved once per command: given a Hub id, each command asks the (stubbed) Hub for at
most one snapshot of metadata and safetensors, plus one of `.bin` weights when the repo has no safetensors."""

from __future__ import annotations

from pathlib import Path

import pytest

import align_torch.checkpoint.hub as hub
from tests.helpers.cli import run_cli
from tests.helpers.train_data import write_shapes_classes, write_shapes_manifest

REPO = "someone/align-tiny"


@pytest.fixture
def hub_calls(model_dir: Path, monkeypatch) -> list[list[str]]:
    """The allow-patterns of every snapshot_download call; every call answers with the tiny model's folder."""
    calls: list[list[str]] = []

    def fake_snapshot_download(repo_id, **kwargs):
        assert repo_id == REPO
        calls.append(kwargs["allow_patterns"])
        return str(model_dir)

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return calls


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resolution_data")
    texts = root / "texts.txt"
    texts.write_text("a red circle\na blue square\n")
    return {
        "train": write_shapes_manifest(root / "pairs", 4),
        "classes": write_shapes_classes(root / "classes", per_class=1),
        "texts": texts,
    }


def _commands(data: dict[str, Path], out: Path) -> dict[str, list]:
    image = sorted(data["classes"].rglob("*.png"))[0]
    model = ["--model", REPO, "--device", "cpu"]
    return {
        "zero-shot": ["zero-shot", image, "--labels", "red", "blue", "--quiet", *model],
        "embed file": ["embed", image, "--out", out / "one.safetensors", "--quiet", *model],
        "embed folder": ["embed", image, "--out", out / "folder", "--quiet", *model],
        "embed-text": ["embed-text", data["texts"], "--out", out / "texts.safetensors", "--quiet", *model],
        "eval": ["eval", "--zero-shot-dir", data["classes"], "--templates", "simple", "--quiet", *model],
        "finetune": [
            "finetune",
            "--train",
            data["train"],
            "--out",
            out / "run",
            "--batch-size",
            "4",
            "--max-steps",
            "1",
            "--quiet",
            *model,
        ],
        "summary": ["summary", "--model", REPO, "--stages-only"],
        "probe": ["probe", "--train-classes", data["classes"], "--val-classes", data["classes"], "--out", out / "probe"]
        + ["--quiet", *model],
    }


@pytest.mark.parametrize(
    "command", ["zero-shot", "embed file", "embed folder", "embed-text", "eval", "finetune", "summary", "probe"]
)
def test_a_hub_id_is_resolved_once_per_command(command, hub_calls, data, tmp_path):
    status, _, err = run_cli(*_commands(data, tmp_path)[command])
    assert status == 0, err
    # At most 2 in general (metadata + safetensors, then `.bin` only when the repo has no safetensors); the stub's
    # folder has safetensors, so exactly one here: a second resolution anywhere in the command shows.
    assert len(hub_calls) == 1, hub_calls
    if command != "summary":
        assert "*.safetensors" in hub_calls[0]  # metadata and weights in one call
    else:
        assert hub_calls == [hub.METADATA_PATTERNS]  # a summary reads the config alone


def test_outputs_record_the_hub_id_not_the_cache_folder(hub_calls, data, tmp_path):
    from align_torch.retrieval.embeddings_file import EmbeddingFile
    from align_torch.retrieval.layout import FolderInfo

    commands = _commands(data, tmp_path)
    assert run_cli(*commands["embed-text"])[0] == 0
    assert run_cli(*commands["embed folder"])[0] == 0
    assert EmbeddingFile.load(tmp_path / "texts.safetensors").model == REPO
    assert FolderInfo.load(tmp_path / "folder").model == REPO
