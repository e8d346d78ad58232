"""Nothing a user owns is deleted or lost: convert and folder writes refuse what is not ours and swap atomically,
leftovers of killed runs are cleaned up, outputs follow the umask, every file name round-trips through the
embeddings file, broken links are reported as skipped, and the CLI fails on one line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from align_torch.checkpoint.weights import is_checkpoint_dir
from align_torch.retrieval.embeddings_file import EmbeddingFile
from align_torch.util import fileio
from align_torch.util.fileio import atomic_dir, atomic_file, check_destination, path_to_text, text_to_path
from tests.helpers.cli import run_cli


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under root: file bytes, link targets, folders."""
    tree: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            tree[rel] = os.readlink(p) if p.is_symlink() else ("<dir>" if p.is_dir() else p.read_bytes())
    return tree


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# --- convert never deletes what is not a checkpoint ---------------------------------------------------
def test_convert_into_an_unrelated_folder_refuses_and_keeps_every_byte(tiny_hf_dir, tmp_path):
    dst = tmp_path / "thesis"
    (dst / "chapters").mkdir(parents=True)
    (dst / "chapters" / "one.tex").write_text("\\section{Intro}")
    (dst / "notes.txt").write_bytes(os.urandom(64))
    before_dst, before_src = snapshot(dst), snapshot(tiny_hf_dir)
    for extra in ([], ["--overwrite"]):
        status, _, stderr = run_cli("convert", tiny_hf_dir, dst, *extra)
        assert status == 2
        line = one_error_line(stderr)
        assert ("not empty" in line and "--overwrite" in line) if not extra else "not a checkpoint" in line
        assert snapshot(dst) == before_dst and snapshot(tiny_hf_dir) == before_src
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]


def test_convert_into_a_folder_holding_the_source_refuses(tiny_hf_dir, tmp_path, monkeypatch):
    """`convert proj/models/hf proj --overwrite` and `convert SRC . --overwrite` from inside a checkpoint."""
    proj = tmp_path / "proj"
    shutil.copytree(tiny_hf_dir, proj / "models" / "hf")
    shutil.copy(tiny_hf_dir / "config.json", proj / "config.json")  # proj even looks like a checkpoint at the top
    shutil.copy(tiny_hf_dir / "model.safetensors", proj / "model.safetensors")
    before = snapshot(proj)
    status, _, stderr = run_cli("convert", proj / "models" / "hf", proj, "--overwrite")
    assert status == 2 and "it is or contains" in one_error_line(stderr) and "models/hf" in stderr
    assert snapshot(proj) == before

    here = tmp_path / "here"
    shutil.copytree(tiny_hf_dir, here)
    assert is_checkpoint_dir(here)
    monkeypatch.chdir(here)
    status, _, stderr = run_cli("convert", proj / "models" / "hf", ".", "--overwrite")
    assert status == 2 and "current working directory" in one_error_line(stderr)
    assert snapshot(here) == snapshot(tiny_hf_dir)


def test_protected_paths_are_never_replaced(tmp_path, monkeypatch):
    """Even a folder the caller would replace: not when it holds a protected path or the working directory."""
    dst = tmp_path / "dst"
    (dst / "src").mkdir(parents=True)
    anything = dict(overwrite=True, replaceable=lambda p: True)
    check_destination(dst, **anything)
    with pytest.raises(FileExistsError, match="contains '.*src'"):
        check_destination(dst, protect=[dst / "src"], **anything)
    link = tmp_path / "link_to_src"
    link.symlink_to(dst / "src")
    with pytest.raises(FileExistsError, match="contains"):
        check_destination(dst, protect=[link], **anything)  # symbolic links are resolved
    monkeypatch.chdir(dst / "src")
    with pytest.raises(FileExistsError, match="current working directory"):
        check_destination(dst, **anything)
    with pytest.raises(FileExistsError, match="symbolic link"):
        check_destination(link, **anything)


def test_save_pretrained_replaces_its_own_checkpoint_only(tiny_native_dir, tmp_path):
    from align_torch import AlignModel

    model = AlignModel.from_pretrained(tiny_native_dir)
    model.save_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m")  # saving again over a checkpoint is fine
    assert is_checkpoint_dir(tmp_path / "m")
    docs = tmp_path / "docs"
    (docs / "drafts").mkdir(parents=True)
    (docs / "drafts" / "paper.md").write_text("draft")
    with pytest.raises(FileExistsError, match="not a checkpoint"):
        model.save_pretrained(docs)
    shutil.copy(tmp_path / "m" / "config.json", docs)  # config and weights beside a subfolder: still not ours
    shutil.copy(tmp_path / "m" / "model.safetensors", docs)
    before = snapshot(docs)
    with pytest.raises(FileExistsError, match="not a checkpoint"):
        model.save_pretrained(docs)
    assert snapshot(docs) == before


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_overwrite_replaces_a_checkpoint(tiny_hf_dir, tmp_path, monkeypatch, exchange):
    dst = tmp_path / "model"
    assert run_cli("convert", tiny_hf_dir, dst)[0] == 0
    (dst / "old-only.txt").write_text("from the first conversion")
    assert not is_checkpoint_dir(tmp_path)
    calls = []
    real = fileio._exchange

    def spy(a, b):
        calls.append((a, b))
        return real(a, b) if exchange else False

    monkeypatch.setattr(fileio, "_exchange", spy)
    status, _, stderr = run_cli("convert", tiny_hf_dir, dst, "--to", "hf", "--overwrite")
    assert status == 0, stderr
    assert len(calls) == 1 and calls[0][1] == dst
    assert "format" not in json.loads((dst / "config.json").read_text())  # the HF layout replaced the native one
    assert not (dst / "old-only.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the old version and the temp are gone


def test_the_destination_never_goes_missing_while_replaced(tmp_path, monkeypatch):
    """A separate process watching the path during 100 replacements never finds it absent (every plain rename
    is slowed down, so that a replacement made of two renames would show its gap)."""
    real_rename = os.rename

    def slow_rename(a, b):
        real_rename(a, b)
        time.sleep(0.002)

    monkeypatch.setattr(fileio.os, "rename", slow_rename)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "config.json").write_text("{}")
    watch = textwrap.dedent(f"""
        import os
        print("ready", flush=True)
        checks = missing = 0
        while not os.path.exists({str(tmp_path / "stop")!r}):
            checks += 1
            missing += not os.path.isdir({str(dst)!r})
        print(checks, missing)
    """)
    watcher = subprocess.Popen([sys.executable, "-c", watch], stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout.readline() == "ready\n"
        for i in range(100):
            with atomic_dir(dst, overwrite=True, replaceable=lambda p: True) as tmp:
                (tmp / "config.json").write_text(json.dumps({"i": i}))
    finally:
        (tmp_path / "stop").touch()
        checks, missing = map(int, watcher.communicate(timeout=60)[0].split())
    assert checks > 100
    assert missing == 0
    assert json.loads((dst / "config.json").read_text()) == {"i": 99}


def test_fallback_failure_says_where_the_old_folder_is(tmp_path, monkeypatch):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep").write_text("old")
    monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(a, b):
        if Path(b) == dst:  # moving the new folder in, or the old one back, fails
            raise OSError(5, "I/O error")
        real_rename(a, b)

    monkeypatch.setattr(fileio.os, "rename", rename)
    with pytest.raises(OSError, match="previous version is kept at") as info:
        with atomic_dir(dst, overwrite=True, replaceable=lambda p: True) as tmp:
            (tmp / "keep").write_text("new")
    kept = Path(str(info.value).split("kept at ")[1].strip("'"))
    assert (kept / "keep").read_text() == "old"


# --- leftovers of a killed run ------------------------------------------------------------------------
def test_leftovers_of_a_killed_run_are_removed_by_the_next(tmp_path):
    dst = tmp_path / "out"
    killed = textwrap.dedent(f"""
        import os, signal
        from align_torch.util.fileio import atomic_dir, atomic_file
        with atomic_file({str(tmp_path / "f.bin")!r}) as t:
            t.write_bytes(b"half")
            with atomic_dir({str(dst)!r}) as d:
                (d / "model.safetensors").write_bytes(b"half")
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", killed], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert len(leftovers) == 2 and all(".align-torch-tmp-" in n for n in leftovers)

    foreign = tmp_path / f".out.align-torch-tmp-{fileio._host_tag()}-999999999-0123abcd"
    foreign.mkdir()  # our name but no marker: not provably ours
    (foreign / "data").write_text("someone's")
    with pytest.warns(UserWarning, match="not removed"):
        with atomic_dir(dst) as d:
            (d / "x").write_text("done")
    with atomic_file(tmp_path / "f.bin") as t:
        t.write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([foreign.name, "f.bin", "out"])
    assert (foreign / "data").read_text() == "someone's"


def test_a_running_writers_temp_is_left_alone(tmp_path):
    busy = tmp_path / f".out.align-torch-tmp-{fileio._host_tag()}-{os.getppid()}-0123abcd"
    busy.mkdir()
    (busy / fileio.MARKER).write_text(json.dumps({"pid": os.getppid()}))
    with atomic_dir(tmp_path / "out") as d:
        (d / "x").write_text("done")
    assert busy.is_dir()


# --- the umask ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_outputs_follow_the_umask(tiny_native_dir, tmp_path, mask):
    from align_torch import AlignModel

    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    with umask(mask):
        assert run_cli("convert", tiny_native_dir, tmp_path / "hf", "--to", "hf")[0] == 0
        AlignModel.from_pretrained(tiny_native_dir).save_pretrained(tmp_path / "native")
        EmbeddingFile(F.normalize(torch.randn(2, 4), dim=-1), ["a", "b"], "text", "m").save(tmp_path / "e.st")
    for folder in ("hf", "native"):
        assert stat.S_IMODE((tmp_path / folder).stat().st_mode) == dir_mode
        for f in (tmp_path / folder).iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == file_mode, f
    assert stat.S_IMODE((tmp_path / "e.st").stat().st_mode) == file_mode


def run_as_other_user(code: str) -> subprocess.CompletedProcess:
    """Run Python `code` as a user without special rights (as root: nobody, through setpriv)."""
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    if drop and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot read as another user")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    probe = subprocess.run([*drop, sys.executable, "-c", "import align_torch"], capture_output=True, env=env)
    if drop and probe.returncode != 0:
        pytest.skip("the unprivileged user cannot run this Python environment (installed in a private folder)")
    return subprocess.run([*drop, sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_an_unreadable_file_says_permission_denied(tmp_path):
    folder = Path(tempfile.mkdtemp(prefix="align-torch-perm-"))
    try:
        folder.chmod(0o755)
        path = folder / "e.safetensors"
        EmbeddingFile(F.normalize(torch.randn(2, 4), dim=-1), ["a", "b"], "text", "m").save(path)
        path.chmod(0o000)
        code = f"from align_torch.retrieval.embeddings_file import EmbeddingFile\nEmbeddingFile.load({str(path)!r})"
        proc = run_as_other_user(code)
        assert proc.returncode != 0
        assert "permission denied" in proc.stderr.splitlines()[-1]
        assert "EmbeddingFileError" in proc.stderr.splitlines()[-1]
    finally:
        shutil.rmtree(folder)


# --- every file name round-trips ----------------------------------------------------------------------
ODD_NAMES = [b"caf\xe9 latin-1.png", b"two words.png", b"new\nline.png", b"file:looks-like-a-uri.png"]


def test_path_text_round_trip():
    for raw in [*ODD_NAMES, b"/abs/\xff\xfe/x.jpg", b"rel/%41.jpg", "日本.jpg".encode()]:
        text = path_to_text(raw)
        text.encode("utf-8")  # valid Unicode, writable by any UTF-8 writer
        assert os.fsencode(text_to_path(text)) == raw
        assert os.fsencode(text_to_path(path_to_text(os.fsdecode(raw)))) == raw
    assert path_to_text("two words.png") == "two words.png"  # readable names stay as they are
    assert path_to_text(b"\xff.jpg") == "file:%FF.jpg"


def _write_photo(path: bytes, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    with open(path, "wb") as f:
        PIL.Image.fromarray(pixels).save(f, format="PNG")


def test_odd_file_names_round_trip_through_embed_and_search(tiny_native_dir, tmp_path):
    folder = os.fsencode(tmp_path / "photos")
    os.mkdir(folder)
    expected = set()
    for seed, name in enumerate(ODD_NAMES):
        _write_photo(os.path.join(folder, name), seed)
        expected.add(os.path.join(folder, name))
    out = tmp_path / "e.safetensors"
    status, _, stderr = run_cli("embed", os.fsdecode(folder), "--out", out, "--model", tiny_native_dir, "--workers", 0)
    assert status == 0, stderr
    index = EmbeddingFile.load(out)
    assert {os.fsencode(i) for i in index.items} == expected
    hits = index.search(index.vectors[0], k=len(ODD_NAMES))
    assert {os.fsencode(h.item) for h in hits} == expected
    status, stdout, stderr = run_cli("search", out, "a photo", "--json", "-k", len(ODD_NAMES))
    assert status == 0, stderr
    stdout.encode("utf-8")
    assert {os.fsencode(text_to_path(r["item"])) for r in json.loads(stdout)["results"]} == expected
    status, stdout, stderr = run_cli(
        "zero-shot", os.fsdecode(folder), "--labels", "a", "b", "--json", "--model", tiny_native_dir, "--workers", 0
    )
    assert status == 0, stderr
    stdout.encode("utf-8")  # what a real stdout does: a lone surrogate escape would fail here
    assert {os.fsencode(text_to_path(r["image"])) for r in json.loads(stdout)["results"]} == expected


# --- broken links are reported as skipped -------------------------------------------------------------
def test_link_loops_and_dangling_links_are_skipped_and_reported(tiny_native_dir, tmp_path):
    from align_torch.data.images import list_images

    folder = tmp_path / "photos"
    folder.mkdir()
    _write_photo(os.fsencode(folder / "good.png"), 0)
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    (folder / "loop_a.png").symlink_to(folder / "loop_b.png")
    (folder / "loop_b.png").symlink_to(folder / "loop_a.png")
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to(folder)  # a folder loop for `**`
    broken = {"dangling.png", "loop_a.png", "loop_b.png"}
    for spec in (folder, folder / "**" / "*.png"):
        assert sorted(p.name for p in list_images([spec])) == sorted(broken | {"good.png"})
    out = tmp_path / "e.safetensors"
    status, _, stderr = run_cli("embed", folder, "--out", out, "--model", tiny_native_dir, "--workers", 0)
    assert status == 0, stderr
    assert "dangling symbolic link" in stderr and stderr.count("symbolic link loop") == 2
    index = EmbeddingFile.load(out)
    assert [Path(i).name for i in index.items] == ["good.png"]
    assert sorted(Path(s["item"]).name for s in index.skipped) == sorted(broken)


def test_an_unreadable_subfolder_is_reported(tmp_path):
    folder = Path(tempfile.mkdtemp(prefix="align-torch-perm-"))
    try:
        folder.chmod(0o755)
        _write_photo(os.fsencode(folder / "good.png"), 0)
        (folder / "locked").mkdir(mode=0o000)
        code = f"from align_torch.data.images import list_images\nprint([p.name for p in list_images({str(folder)!r})])"
        proc = run_as_other_user(code)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "['good.png']"
        assert f"skipped folder {folder / 'locked'}: permission denied" in proc.stderr
    finally:
        (folder / "locked").chmod(0o755)
        shutil.rmtree(folder)


# --- the command line fails on one line ---------------------------------------------------------------
def _align_torch(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "align_torch", *map(str, argv)], capture_output=True, text=True, **kwargs
    )


def test_cli_errors_are_one_line_with_exit_status(tmp_path):
    missing = _align_torch("convert", tmp_path / "missing", tmp_path / "x")
    assert missing.returncode == 2 and one_error_line(missing.stderr).startswith("align-torch convert: error:")
    bad_arg = _align_torch("convert", "a", "b", "--to", "onnx")
    assert bad_arg.returncode == 2 and "invalid choice" in one_error_line(bad_arg.stderr)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    bad_file = _align_torch("search", tmp_path / "bad.safetensors", "query")
    assert bad_file.returncode == 2 and "bad.safetensors" in one_error_line(bad_file.stderr)


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback():
    code = textwrap.dedent("""
        import sys
        import align_torch.commands.summary as summary
        from align_torch.cli import main

        def boom(args):
            raise RuntimeError("first line\\nsecond line")

        summary.run = boom
        sys.exit(main(sys.argv[1:]))
    """)
    plain = subprocess.run([sys.executable, "-c", code, "summary"], capture_output=True, text=True)
    assert plain.returncode == 1
    assert "RuntimeError: first line second line" in one_error_line(plain.stderr)
    debug = subprocess.run([sys.executable, "-c", code, "--debug", "summary"], capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "in boom" in debug.stderr


def test_a_closed_pipe_ends_search_quietly(tiny_native_dir, tmp_path):
    """`align-torch search ... | head -1`: the reader is gone before the results are printed."""
    from align_torch.checkpoint.weights import read_config

    out = tmp_path / "e.safetensors"
    dim = read_config(tiny_native_dir).projection_dim
    items = [f"text {i}" for i in range(50)]
    EmbeddingFile(F.normalize(torch.randn(50, dim), dim=-1), items, "text", str(tiny_native_dir)).save(out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "align_torch", "search", str(out), "query", "-k", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert stderr == ""
