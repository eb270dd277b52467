"""Image checks: paths that leave the root are refused before anything is opened; decodes are guarded.

"Never opened" is shown two ways: every Python-level way to open a file is recorded (builtins.open,
os.open, Path.open/read_bytes, PIL.Image.open), and, at the OS level, the outside target is a FIFO:
opening a FIFO for reading blocks until a writer comes, so a test that opened it would hang (and the
timeout would fail it).
"""

from __future__ import annotations

import builtins
import io
import os
import pathlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from parsit_data import images as images_mod
from parsit_data.images import ImageOptions, inspect_image, load_image
from parsit_data.records import Reject

from validate_helpers import conv, png_header_only, quarantine_lines, run_build, save_image, truncated_png, write_jsonl

CHECKERS = {"load": load_image, "inspect": inspect_image}


def _reason(fn, rel, opts) -> str:
    with pytest.raises(Reject) as exc:
        fn(rel, opts)
    return exc.value.rejection.reason


@pytest.fixture()
def layout(tmp_path):
    """tmp/root (the image root) with a good image, and tmp/outside with a real file and a FIFO."""
    root = tmp_path / "root"
    save_image(root / "ok.png", (40, 30))
    outside = tmp_path / "outside"
    secret = save_image(outside / "secret.png", (40, 30))
    fifo = outside / "pipe.png"
    os.mkfifo(fifo)
    (root / "link_secret.png").symlink_to(secret)
    (root / "link_fifo.png").symlink_to(fifo)
    (root / "subdir_link").symlink_to(outside, target_is_directory=True)
    (root / "inside_link.png").symlink_to(root / "ok.png")
    return root, outside


@pytest.fixture()
def open_calls(monkeypatch):
    """Record the path of every attempt to open a file, by any of the usual routes."""
    calls: list[str] = []
    real_open, real_os_open = builtins.open, os.open
    real_path_open, real_read_bytes, real_pil_open = pathlib.Path.open, pathlib.Path.read_bytes, Image.open

    def rec(p):
        if isinstance(p, (str, bytes, os.PathLike)):
            calls.append(os.path.realpath(os.fsdecode(p)))

    def fake_open(file, *a, **k):
        rec(file)
        return real_open(file, *a, **k)

    def fake_os_open(path, *a, **k):
        rec(path)
        return real_os_open(path, *a, **k)

    def fake_path_open(self, *a, **k):
        rec(self)
        return real_path_open(self, *a, **k)

    def fake_read_bytes(self):
        rec(self)
        return real_read_bytes(self)

    def fake_pil_open(fp, *a, **k):
        rec(fp)
        return real_pil_open(fp, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(pathlib.Path, "open", fake_path_open)
    monkeypatch.setattr(pathlib.Path, "read_bytes", fake_read_bytes)
    monkeypatch.setattr(Image, "open", fake_pil_open)
    return calls


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["full", "header"])
@pytest.mark.parametrize("fn", list(CHECKERS))
@pytest.mark.parametrize("rel", ["link_secret.png", "link_fifo.png", "../outside/secret.png", "../outside/pipe.png",
                                 "subdir_link/secret.png", "subdir_link/pipe.png", "ok.png/../../outside/secret.png",
                                 "ABSOLUTE_SECRET", "ABSOLUTE_FIFO"])
def test_paths_leaving_the_root_are_refused_and_never_opened(layout, open_calls, rel, fn, mode):
    root, outside = layout
    rel = {"ABSOLUTE_SECRET": str(outside / "secret.png"), "ABSOLUTE_FIFO": str(outside / "pipe.png")}.get(rel, rel)
    opts = ImageOptions(root=root, check=mode)
    assert _reason(CHECKERS[fn], rel, opts) == "image_outside_root"
    opened_outside = [c for c in open_calls if c.startswith(os.path.realpath(outside))]
    assert opened_outside == []
    # the recorder does see opens: the good image is opened through it
    CHECKERS[fn]("ok.png", opts)
    assert os.path.realpath(root / "ok.png") in open_calls


def test_symlink_that_stays_inside_the_root_is_fine(layout):
    root, _ = layout
    img = load_image("inside_link.png", ImageOptions(root=root))
    assert (img.width, img.height) == (40, 30)


@pytest.mark.timeout(60)
def test_build_quarantines_escapes_without_opening_them(layout, tmp_path):
    root, outside = layout
    escapes = ["link_secret.png", "link_fifo.png", "../outside/secret.png", "../outside/pipe.png",
               "subdir_link/pipe.png", str(outside / "pipe.png")]
    src = write_jsonl(tmp_path / "in.jsonl", [conv(user="<image>\nRead it.", image=e) for e in escapes]
                      + [conv(user="<image>\nRead it.", image="inside_link.png")])
    m = run_build([src], tmp_path / "out", image_root=str(root))  # a FIFO opened here would hang the build
    assert m["sources"][0]["quarantined"] == {"image_outside_root": len(escapes)}
    assert m["sources"][0]["kept"] == 1
    assert {q["record"]["image"] for q in quarantine_lines(tmp_path / "out")} == set(escapes)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fn", list(CHECKERS))
def test_fifo_or_directory_inside_the_root_is_unreadable_not_a_hang(tmp_path, fn):
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dir.png").mkdir()
    for rel in ("fifo.png", "dir.png"):
        assert _reason(CHECKERS[fn], rel, ImageOptions(root=tmp_path)) == "image_unreadable"


@pytest.mark.parametrize("fn", list(CHECKERS))
def test_missing_empty_garbage_and_no_root(tmp_path, fn):
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    opts = ImageOptions(root=tmp_path)
    check = CHECKERS[fn]
    assert _reason(check, "nope.png", opts) == "image_missing"
    assert _reason(check, "", opts) == "image_missing"
    assert _reason(check, "zero.png", opts) == "image_unreadable"
    assert _reason(check, "zero.png", ImageOptions(root=tmp_path, check="header")) == "image_unreadable"
    assert _reason(check, "garbage.jpg", opts) == "image_unreadable"
    assert _reason(check, "nope.png", ImageOptions(root=None)) == "image_missing"


@pytest.mark.parametrize("fn", list(CHECKERS))
def test_truncated_image_needs_a_full_decode(tmp_path, fn):
    truncated_png(tmp_path / "cut.png")
    assert _reason(CHECKERS[fn], "cut.png", ImageOptions(root=tmp_path, check="full")) == "image_unreadable"
    info = CHECKERS[fn]("cut.png", ImageOptions(root=tmp_path, check="header"))  # header mode cannot tell
    assert (info.width, info.height) == (128, 128)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.fixture()
def decodes(monkeypatch):
    """Count pixel decodes (every format's decode goes through ImageFile.load)."""
    n = {"load": 0}
    real = ImageFile.ImageFile.load

    def counting(self):
        n["load"] += 1
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return n


@pytest.mark.parametrize("mode", ["full", "header"])
@pytest.mark.parametrize("fn", list(CHECKERS))
@pytest.mark.parametrize("declared", [(100_000, 100_000), (9_000, 8_000)])
def test_decompression_bomb_is_refused_before_any_decode(tmp_path, decodes, fn, mode, declared):
    # 10^10 pixels trips Pillow's own guard at open; 72 M is under Pillow's but over Parsit's 64 M default.
    (tmp_path / "bomb.png").write_bytes(png_header_only(*declared))
    assert _reason(CHECKERS[fn], "bomb.png", ImageOptions(root=tmp_path, check=mode)) == "image_too_large"
    assert decodes["load"] == 0


@pytest.mark.parametrize("fn", list(CHECKERS))
def test_pixel_limit_guards_every_decode_including_reencoding(tmp_path, decodes, fn):
    save_image(tmp_path / "a.png", (100, 100))
    for mode in ("full", "header"):
        opts = ImageOptions(root=tmp_path, check=mode, max_pixels=100 * 100 - 1, max_side=50)
        assert _reason(CHECKERS[fn], "a.png", opts) == "image_too_large"
    assert decodes["load"] == 0
    CHECKERS[fn]("a.png", ImageOptions(root=tmp_path, max_pixels=100 * 100))  # at the limit: fine
    assert decodes["load"] == 1


@pytest.mark.parametrize("fmt,name", [("PNG", "a.png"), ("JPEG", "b.jpg"), ("WEBP", "c.webp"), ("GIF", "d.gif")])
def test_header_mode_never_decodes_pixels(tmp_path, decodes, monkeypatch, fmt, name):
    save_image(tmp_path / name, (70, 50), fmt=fmt)
    opts = ImageOptions(root=tmp_path, check="header")
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("header mode decoded pixels"))
    for fn in (load_image, inspect_image):
        info = fn(name, opts)
        assert (info.width, info.height) == (70, 50)
    assert decodes["load"] == 0


def test_full_mode_decodes_once_and_keeps_original_bytes(tmp_path, decodes):
    p = save_image(tmp_path / "a.png", (70, 50))
    img = load_image("a.png", ImageOptions(root=tmp_path))
    assert decodes["load"] == 1 and img.data == p.read_bytes()
    inspect_image("a.png", ImageOptions(root=tmp_path))
    assert decodes["load"] == 2


@pytest.mark.parametrize("fn", list(CHECKERS))
def test_min_side(tmp_path, fn):
    save_image(tmp_path / "thin.png", (300, 15))
    save_image(tmp_path / "ok.png", (16, 16))
    opts = ImageOptions(root=tmp_path, min_side=16)
    assert _reason(CHECKERS[fn], "thin.png", opts) == "image_too_small"
    assert CHECKERS[fn]("ok.png", opts).width == 16
    assert CHECKERS[fn]("thin.png", ImageOptions(root=tmp_path)).width == 300  # 0 disables


def test_open_does_not_follow_a_symlink_swapped_in_after_the_check(layout, monkeypatch):
    """The path is checked, then opened with O_NOFOLLOW: a link swapped in between is refused."""
    root, outside = layout
    real_resolve = images_mod.resolve_image_path

    def resolve_then_swap(rel, r):
        path = real_resolve(rel, r)
        path.unlink()
        path.symlink_to(outside / "secret.png")  # the race an attacker would try
        return path

    monkeypatch.setattr(images_mod, "resolve_image_path", resolve_then_swap)
    assert _reason(load_image, "ok.png", ImageOptions(root=root)) == "image_unreadable"


def test_oversized_file_is_refused_before_it_is_read(tmp_path):
    import tracemalloc

    from parsit_data.images import max_file_bytes

    p = save_image(tmp_path / "a.png", (20, 20))
    with open(p, "ab") as f:  # a valid image followed by a mountain of trailing bytes (sparse file)
        f.truncate(max_file_bytes(20 * 20) + 1)
    tracemalloc.start()
    try:
        assert _reason(load_image, "a.png", ImageOptions(root=tmp_path, max_pixels=20 * 20)) == "image_too_large"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4e6  # reading the 16 MiB file would show up here


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fn", list(CHECKERS))
def test_a_fifo_swapped_in_after_the_check_does_not_block(tmp_path, monkeypatch, fn):
    """Between the stat check and the open, the file becomes a FIFO: the open must not wait for a writer."""
    save_image(tmp_path / "ok.png")
    real_resolve = images_mod.resolve_image_path

    def resolve_then_swap(rel, r):
        path = real_resolve(rel, r)
        path.unlink()
        os.mkfifo(path)
        return path

    monkeypatch.setattr(images_mod, "resolve_image_path", resolve_then_swap)
    assert _reason(CHECKERS[fn], "ok.png", ImageOptions(root=tmp_path)) == "image_unreadable"


@pytest.mark.parametrize("fn", list(CHECKERS))
def test_symlink_loops_urls_and_devices_are_named(tmp_path, fn):
    os.symlink("loop.png", tmp_path / "loop.png")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    opts = ImageOptions(root=tmp_path)
    assert _reason(CHECKERS[fn], "loop.png", opts) == "image_unreadable"
    assert _reason(CHECKERS[fn], "https://example.com/a.png", opts) == "image_missing"
    assert _reason(CHECKERS[fn], "zero.png", opts) == "image_outside_root"


@pytest.mark.parametrize("error", [MemoryError, RecursionError])
def test_the_machine_running_out_is_not_an_unreadable_image(tmp_path, monkeypatch, error):
    """Only Pillow's ways of saying "bad data" quarantine an image; MemoryError is not one of them."""
    save_image(tmp_path / "ok.png")

    def failing_open(*a, **k):
        raise error("from the machine, not the image")

    monkeypatch.setattr(images_mod.Image, "open", failing_open)
    with pytest.raises(error):
        load_image("ok.png", ImageOptions(root=tmp_path))
