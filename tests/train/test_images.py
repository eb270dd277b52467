"""Pixels for the vision tower follow the manifest's geometry and agree with the build's token counts."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from parsit_data.errors import ParsitError
from parsit_train.data import ImageProcessor


def _png(w, h, color):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def test_pad_mode_pads_with_the_mean_colour_then_normalises():
    proc = ImageProcessor({"image_size": 28, "patch_size": 14, "aspect": "pad"})
    pixels, crops = proc.process_sample([_png(56, 28, (255, 255, 255))], [(56, 28)])
    assert pixels.shape == (1, 3, 28, 28) and pixels.dtype == np.float32 and crops == [1]
    # the white image fills the middle rows (value 1.0); the padding is the mean colour, ~0 after normalising
    assert np.allclose(pixels[0, :, 10:18, :], 1.0, atol=1e-2)
    assert np.allclose(pixels[0, :, :5, :], 0.0, atol=0.01)
    assert np.allclose(pixels[0, :, -5:, :], 0.0, atol=0.01)


def test_square_mode_stretches_and_black_is_minus_one():
    proc = ImageProcessor({"image_size": 28, "patch_size": 14, "aspect": "square"})
    pixels, _ = proc.process_sample([_png(56, 28, (0, 0, 0))], [(56, 28)])
    assert np.allclose(pixels, -1.0)


def test_anyres_is_the_families_not_plain_llavas():
    with pytest.raises(ParsitError, match="llava_next / llava_onevision"):
        ImageProcessor({"image_size": 28, "patch_size": 14, "aspect": "anyres", "grid_pinpoints": [[28, 56]]})


def test_undecodable_and_oversized_images_are_refused():
    proc = ImageProcessor({"image_size": 28, "patch_size": 14, "aspect": "pad"}, max_pixels=1000)
    with pytest.raises(ParsitError, match="cannot decode an image of sample 'bad'"):
        proc.process_sample([b"not an image"], [(1, 1)], "bad")
    with pytest.raises(ParsitError, match="has 40x40 pixels, over the limit of 1000"):
        proc.process_sample([_png(40, 40, (1, 2, 3))], [(40, 40)], "big")
    truncated = _png(40, 20, (1, 2, 3))[:-30]
    with pytest.raises(ParsitError, match="cannot decode"):
        ImageProcessor({"image_size": 28, "patch_size": 14}).process_sample([truncated], [(40, 20)], "cut")
