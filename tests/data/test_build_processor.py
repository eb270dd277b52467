"""``parsit-data build --processor DIR``: llava-hf processor folders, exact counts, EXIF, overlong, bad folders."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from parsit_data.build import build
from parsit_data.cli.main import main
from parsit_data.config import BuildConfig
from parsit_data.format import load_manifest, read_shard
from parsit_data.format.vision import VisionGeometry
from vision_support import NEXT_CLIP, OV_SIGLIP, llava_next_processor, llava_onevision_processor, save_processor


@pytest.fixture(scope="module")
def next_dir(tmp_path_factory) -> Path:
    return save_processor(llava_next_processor(**NEXT_CLIP), tmp_path_factory.mktemp("next") / "proc")


@pytest.fixture(scope="module")
def ov_dir(tmp_path_factory) -> Path:
    return save_processor(llava_onevision_processor(**OV_SIGLIP), tmp_path_factory.mktemp("ov") / "proc")


def _build(tmp_path: Path, records: list[dict], image_root: Path | None = None, **kw):
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "out"
    m = build(BuildConfig(inputs=[str(src)], out=str(out), image_root=str(image_root or tmp_path), **kw))
    rows = [r for s in m.shards for r in read_shard(out / s.path).to_pylist()]
    q = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    return m, rows, q


@pytest.fixture(scope="module")
def records54(tmp_path_factory) -> tuple[Path, list[dict]]:
    """54 records, 53 with an image of its own size (one text-only), as the issue's 54-record check."""
    root = tmp_path_factory.mktemp("images")
    recs = [{"id": "text", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]
    for i in range(53):
        w, h = 1 + 97 * i % 900, 1 + 211 * i % 700
        Image.new("RGB", (w, h), (i, 2 * i % 255, 9)).save(root / f"im{i}.png", compress_level=1)
        recs.append({"id": f"r{i}", "image": f"im{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": f"picture {i}"}]})
    return root, recs


def test_processor_build_keeps_every_image_record_with_exact_counts(tmp_path, next_dir, records54):
    root, recs = records54
    m, rows, q = _build(tmp_path, recs, image_root=root, processor=str(next_dir))
    assert q == [] and len(rows) == 54
    g = VisionGeometry.from_processor_dir(next_dir)
    for row in rows:
        sizes = [(s["width"], s["height"]) for s in row["image_sizes"]]
        assert row["input_ids"].count(-200) == len(sizes)
        assert row["num_image_tokens"] == [g.tokens_for(w, h, len(sizes)) for w, h in sizes]
        assert row["length"] == len(row["input_ids"]) - len(sizes) + sum(row["num_image_tokens"])
    assert m.tokenizer.path == str(next_dir)  # the processor's tokenizer, not the default Qwen3 folder
    v = m.vision
    assert (v.family, v.vision_feature_select_strategy, v.num_additional_image_tokens, v.image_size) == \
        ("llava_next", "default", 1, 336)
    assert v.image_processor["image_grid_pinpoints"] == [list(p) for p in g.grid_pinpoints]
    assert v.processor["processor_class"] == "LlavaNextProcessor" and v.exif == "transpose"
    assert load_manifest(tmp_path / "out").vision.geometry() == g


def test_processor_tokenizer_alone_no_longer_quarantines_the_placeholder(tmp_path, next_dir, records54):
    """The issue's 53-of-54: --tokenizer pointing at a llava-hf folder, whose tokenizer has <image> as an
    added special token, took every placeholder for a control token in text."""
    root, recs = records54
    _, rows, q = _build(tmp_path, recs, image_root=root, tokenizer=str(next_dir))
    assert [x["reason"] for x in q] == [] and len(rows) == 54
    with pytest.raises(SystemExit) as exc:  # validate, with the processor's tokenizer, agrees
        main(["validate", str(tmp_path / "data.jsonl"), "--image-root", str(root), "--processor", str(next_dir),
              "--quiet"])
    assert exc.value.code == 0


def _rotated_jpeg(path: Path, orientation: int) -> Image.Image:
    im = Image.new("RGB", (64, 32), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 16, 32))  # a red band on the left: the rotation is visible in the pixels
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return ImageOps.exif_transpose(Image.open(path))


def test_rotated_phone_jpeg_is_counted_and_stored_at_its_displayed_size(tmp_path, ov_dir):
    from transformers.image_utils import load_image

    upright = _rotated_jpeg(tmp_path / "phone.jpg", 6)  # taken sideways: stored 64x32, shown 32x64
    Image.new("RGB", (64, 32)).save(tmp_path / "plain.jpg", format="JPEG")
    recs = [{"id": n, "image": n, "conversations": [{"from": "human", "value": "<image>"},
                                                    {"from": "gpt", "value": "ok"}]} for n in ("phone.jpg", "plain.jpg")]
    m, rows, q = _build(tmp_path, recs, processor=str(ov_dir))
    g = VisionGeometry.from_processor_dir(ov_dir)
    phone, plain = rows
    assert phone["image_sizes"] == [{"width": 32, "height": 64}]
    assert load_image(str(tmp_path / "phone.jpg")).size == (32, 64)  # what transformers makes of the file
    assert phone["num_image_tokens"] == [g.tokens_for(32, 64)] != [g.tokens_for(64, 32)]
    stored = Image.open(io.BytesIO(phone["images"][0]))
    assert stored.size == (32, 64) and stored.convert("RGB").tobytes() == upright.tobytes()
    assert plain["images"][0] == (tmp_path / "plain.jpg").read_bytes()  # no orientation: original bytes
    assert m.vision.exif == "transpose"


def test_image_over_max_length_is_quarantined_never_cut(tmp_path, ov_dir):
    Image.new("RGB", (4032, 3024)).save(tmp_path / "huge.png")
    g = VisionGeometry.from_processor_dir(ov_dir)
    assert g.tokens_for(4032, 3024) > 4000
    rec = {"id": "huge", "image": "huge.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "a large photo"}]}
    for mode in ("drop", "truncate"):
        (tmp_path / mode).mkdir()
        (tmp_path / mode / "huge.png").write_bytes((tmp_path / "huge.png").read_bytes())
        _, rows, q = _build(tmp_path / mode, [rec], processor=str(ov_dir), max_length=4000, overlong=mode)
        assert rows == [] and [x["reason"] for x in q] == ["overlong"]


def test_truncation_recounts_onevision_images_it_keeps(tmp_path, ov_dir):
    """Two images: 730 tokens each. Cut to the first turn, the one image left is a single-image sample and
    gets its full anyres count (1485 for 1x1), so a cut that looked short enough with 730 does not fit."""
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    Image.new("RGB", (640, 480)).save(tmp_path / "photo.png")
    rec = {"id": "two", "images": ["dot.png", "photo.png"], "conversations": [
        {"from": "human", "value": "<image>\nfirst"}, {"from": "gpt", "value": "one"},
        {"from": "human", "value": "<image>\nsecond"}, {"from": "gpt", "value": "two"}]}
    (tmp_path / "fits").mkdir()
    for n in ("dot.png", "photo.png"):
        (tmp_path / "fits" / n).write_bytes((tmp_path / n).read_bytes())
    _, rows, _ = _build(tmp_path / "fits", [rec], processor=str(ov_dir), max_length=1600, overlong="truncate")
    assert rows[0]["num_image_tokens"] == [730, 730] and rows[0]["truncated"] is False
    _, rows, q = _build(tmp_path, [rec], processor=str(ov_dir), max_length=1450, overlong="truncate")
    assert rows == [] and [x["reason"] for x in q] == ["overlong"]


def test_cli_bad_processor_folder_is_one_error_line(tmp_path, next_dir, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in next_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "processor_config.json").read_text())
    del cfg["patch_size"]
    (bad / "processor_config.json").write_text(json.dumps(cfg))
    (tmp_path / "d.jsonl").write_text('{"conversations": [{"from": "human", "value": "hi"}, '
                                      '{"from": "gpt", "value": "yo"}]}\n')
    for argv in (["build", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o"), "--processor", str(bad)],
                 ["validate", str(tmp_path / "d.jsonl"), "--processor", str(bad)]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), err
        assert "processor_config.json" in err[0] and "patch_size" in err[0]


def test_report_and_inspect_show_crops_counts_and_the_images_that_dominate(tmp_path, ov_dir, capsys):
    sizes = {"photo.png": (640, 480), "strip.png": (2000, 500), "dot.png": (1, 1), "page.png": (1240, 1754)}
    for name, wh in sizes.items():
        Image.new("RGB", wh).save(tmp_path / name, compress_level=1)
    recs = [{"id": n, "image": n, "conversations": [{"from": "human", "value": "<image>\nwhat?"},
                                                    {"from": "gpt", "value": "this"}]} for n in sizes]
    recs.append({"id": "pair", "images": ["photo.png", "strip.png"], "conversations": [
        {"from": "human", "value": "<image><image>\ncompare"}, {"from": "gpt", "value": "same"}]})
    _build(tmp_path, recs, processor=str(ov_dir))
    g = VisionGeometry.from_processor_dir(ov_dir)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    crops = report["overall"]["image_crops"]["quantiles"]
    want = sorted([g.crops_for(*wh) for wh in sizes.values()] + [1, 1])  # the pair: base crops only
    assert (crops["n"], crops["max"]) == (6, max(want))
    top = report["top_images"]
    assert [t["tokens"] for t in top] == sorted([g.tokens_for(*wh) for wh in sizes.values()] + [730, 730],
                                                reverse=True)
    assert top[0]["sample_id"] == "page.png" and top[0]["grid"] == list(g.grid_for(1240, 1754))
    assert "Images that dominate sequence length" in (tmp_path / "out" / "report.html").read_text()

    def inspect(sample_id: str) -> str:
        with pytest.raises(SystemExit) as exc:
            main(["inspect", str(tmp_path / "out"), "--id", sample_id])
        assert exc.value.code in (0, None)
        return " ".join(capsys.readouterr().out.split())  # the table wraps at the terminal width

    rows, cols = g.grid_for(2000, 500)
    assert (rows, cols) != (0, 0)
    assert f"strip.png 2000x500, crop grid {rows}x{cols} + base = {1 + rows * cols} crops, " \
           f"{g.tokens_for(2000, 500)} visual tokens" in inspect("strip.png")
    assert "photo.png 640x480, 1 crop (base only), 730 visual tokens" in inspect("pair")
