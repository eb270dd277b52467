"""FamilyPixels and the collator on hand-made rows (no build): EXIF-rotated images are decoded at their
displayed size, a stored count that is not the family's is refused by name, OneVision's multi-image
samples give one crop per image and ``batch_num_images``, and a batch without images gets the family's
own blank image and count."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from parsit_data.errors import ParsitError
from parsit_data.format import VisionGeometry
from parsit_train.data.collator import Collator
from parsit_train.data.pixels import FamilyPixels

PINS = tuple((28 * a, 28 * b) for a in range(1, 4) for b in range(1, 4))


def _vision(family: str) -> dict:
    extra = {"vision_aspect_ratio": "anyres_max_4", "num_image_tokens": 4} if family == "llava_onevision" else {}
    return VisionGeometry(image_size=28, patch_size=14, aspect="anyres", grid_pinpoints=PINS, family=family,
                          image_token="<|image_pad|>", **extra).to_json()


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 40, 90)).save(buf, "PNG")
    return buf.getvalue()


def _rotated_jpeg(w: int, h: int) -> bytes:
    """A JPEG stored w x h with EXIF orientation 6 (displayed rotated: h x w)."""
    img = Image.new("RGB", (w, h), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def _item(px: FamilyPixels, sizes: list[tuple[int, int]], images: list[bytes], counts=None) -> dict:
    g = px.geometry
    n = len(sizes)
    counts = counts or [g.tokens_for(w, h, n) for w, h in sizes]
    ids = np.array([151644] + [-200] * n + [9707, 151645], dtype=np.int32)
    labels = np.array([-100] * (n + 1) + [9707, 151645], dtype=np.int32)
    crops, per = px.decode_crops(images, sizes, "s")
    return {"sample_id": "s", "input_ids": ids, "labels": labels, "num_image_tokens": counts, "image_sizes": sizes,
            "image_crops": crops, "crops_per_image": per}


def test_exif_rotated_images_decode_at_their_displayed_size():
    px = FamilyPixels(_vision("llava_next"))
    img = px.decode(_rotated_jpeg(60, 20))
    assert img.size == (20, 60)
    _, per = px.decode_crops([_rotated_jpeg(60, 20)], [(20, 60)])
    assert per == [px.geometry.crops_for(20, 60)]
    with pytest.raises(ParsitError, match=r"decodes to 20x60 \(EXIF applied\), the build recorded 60x20"):
        px.decode_crops([_rotated_jpeg(60, 20)], [(60, 20)], "rot")


def test_a_stored_count_that_is_not_the_familys_is_refused():
    px = FamilyPixels(_vision("llava_next"))
    collate = Collator(151643, 151655, 512, image_processor=px)
    good = _item(px, [(70, 30)], [_png(70, 30)])
    assert collate([good]).input_ids.eq(151655).sum() == good["num_image_tokens"][0]
    bad = _item(px, [(70, 30)], [_png(70, 30)], counts=[good["num_image_tokens"][0] + 1])
    with pytest.raises(ParsitError, match=r"sample 's': the build counted \d+ visual tokens for image 0 \(70x30"):
        collate([bad])


def test_onevision_multi_image_samples_and_the_blank_image():
    px = FamilyPixels(_vision("llava_onevision"))
    collate = Collator(151643, 151655, 512, image_processor=px, blank_image=(28, 4))
    sizes = [(70, 30), (20, 80)]
    two = _item(px, sizes, [_png(*s) for s in sizes])
    one = _item(px, [(84, 84)], [_png(84, 84)])
    assert two["crops_per_image"] == [1, 1] and two["num_image_tokens"] == [5, 5]  # base crop + 1 newline each
    assert one["crops_per_image"] == [10]
    batch = collate([two, one])
    assert batch.pixel_values.shape == (3, 10, 3, 28, 28)
    assert not batch.pixel_values[0, 1:].any()  # zero patches after an image's own
    assert batch.image_sizes.tolist() == [[30, 70], [80, 20], [84, 84]]
    assert batch.batch_num_images.tolist() == [2, 1]
    assert int(batch.input_ids.eq(151655).sum()) == 10 + one["num_image_tokens"][0]
    text = {**_item(px, [], []), "input_ids": np.array([151644, 9707, 151645], dtype=np.int32),
            "labels": np.array([-100, 9707, 151645], dtype=np.int32)}
    blank = collate([text])
    _, _, tokens = px.blank()
    assert blank.batch_num_images.tolist() == [1] and blank.image_sizes.tolist() == [[28, 28]]
    assert int(blank.input_ids.eq(151655).sum()) == tokens == px.geometry.tokens_for(28, 28)
    assert int(blank.attention_mask[0].sum()) == 3  # the blank image is masked out
