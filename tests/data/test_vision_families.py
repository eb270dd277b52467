"""Differential: the build's visual-token counts against transformers' processors and tiny real models.

For LLaVA-NeXT (CLIP-336 with the ``default`` strategy and a CLS; SigLIP-384 with ``full``) and
LLaVA-OneVision (SigLIP-384, anyres_max_9, 6x6 pinpoints), each geometry is read by
``VisionGeometry.from_processor_dir`` from a folder the processor itself wrote, and every count must equal
(a) the image tokens the processor's ``__call__`` puts in ``input_ids`` and (b) the features the model's
``get_image_features`` returns (tiny one-layer towers at the real crop and patch sizes). Nothing is
downloaded; see tests/data/vision_support.py for how OneVision is built without torchvision.
"""

from __future__ import annotations

import functools
import json
import math
import random

import numpy as np
import pytest
from PIL import Image

from parsit_data.errors import ParsitError
from parsit_data.format import VisionEntry
from parsit_data.format.vision import VisionGeometry, max_crops, select_best_resolution
from vision_support import (NEXT_CLIP, NEXT_SIGLIP, OV_SIGLIP, llava_next_processor,
                            llava_onevision_processor, next_pinpoints, ov_pinpoints, run_samples, save_processor,
                            tiny_model)

#: The shapes transformers itself got wrong (each fixed in a release of 2024-25), (width, height):
REGRESSIONS = {
    # #33261: _get_unpadded_features had current_height/current_width swapped: wrong for non-square grids.
    "issue33261-wide-1x3-grid": (1000, 300), "issue33261-tall-3x1-grid": (300, 1000),
    "issue33261-1x2-grid": (1128, 235), "issue33261-8x1": (8, 1),
    # #34625 (PR 34779): the processor unpadded with tensor sizes, the model with ints: a precision gap.
    "issue34625-820x369": (820, 369), "issue34625-820x738": (820, 738),
    # #35775 (PR 35779): int(h * cw / w) without round(..., 7) in the processor: off by one row/column.
    "issue35775-1107x820": (1107, 820), "issue35775-820x1107": (820, 1107), "issue35775-1128x47": (1128, 47),
    "issue35775-176x55": (176, 55), "issue35775-99x88": (99, 88),
    # PR 33501: a 950x1256 photo was padded to 768x767 with SigLIP-384.
    "pr33501-950x1256": (950, 1256),
}
#: 40 more sizes: extremes, phone photos, screenshots, document scans, pinpoint edges.
SIZES = [(1, 1), (2, 700), (700, 2), (4567, 123), (123, 4567), (1, 5000), (5000, 1), (17, 13), (64, 64),
         (100, 100), (336, 336), (384, 384), (383, 385), (385, 383), (640, 480), (480, 640), (800, 600),
         (1024, 768), (1280, 720), (720, 1280), (1600, 900), (1080, 1920), (1512, 2016), (4032, 3024),
         (2480, 3508), (1700, 2200), (595, 842), (672, 672), (767, 769), (768, 768), (1008, 336), (336, 1008),
         (1151, 383), (1152, 384), (2000, 500), (500, 2000), (1536, 1536), (2304, 384), (1000, 1), (1, 1000)]
ALL_SIZES = SIZES + list(REGRESSIONS.values())

FAMILIES = {
    "next-clip336-default": ("llava_next", llava_next_processor, NEXT_CLIP, next_pinpoints),
    "next-siglip384-full": ("llava_next", llava_next_processor, NEXT_SIGLIP, next_pinpoints),
    "onevision-siglip384": ("llava_onevision", llava_onevision_processor, OV_SIGLIP, ov_pinpoints),
}


@functools.lru_cache(maxsize=None)
def _family(name: str, tmp: str):
    family, make, spec, pins = FAMILIES[name]
    proc = make(**spec)
    geometry = VisionGeometry.from_processor_dir(save_processor(proc, f"{tmp}/{name}"))
    model = tiny_model(family, spec["crop"], spec["patch"], spec["strategy"], pins(spec["crop"]), cls=spec["extra"] == 1)
    return family, proc, geometry, model


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    import torch

    tmp = str(tmp_path_factory.mktemp("processors"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is ~4x faster than two on a shared machine
    yield lambda name: _family(name, tmp)
    torch.set_num_threads(threads)


def _img(w: int, h: int) -> Image.Image:
    return Image.new("RGB", (w, h), (w % 251, h % 241, 7))


def _compare(fam, name, samples):
    """(sample sizes, ours, processor's, model's) for every sample where the three differ. One sample a call:
    a batch pads every sample's pixel_values to the largest grid in it (37 crops with OneVision)."""
    family, proc, g, model = fam(name)
    bad = []
    for i in range(len(samples)):
        chunk = samples[i:i + 1]
        tokens, feats = run_samples(proc, model, family, [[_img(w, h) for w, h in s] for s in chunk])
        ours = [g.tokens_for(w, h, len(s)) for s in chunk for w, h in s]
        per_sample = [sum(g.tokens_for(w, h, len(s)) for w, h in s) for s in chunk]
        if ours != feats or per_sample != tokens:
            bad.append((chunk, ours, tokens, feats))
    return bad


@pytest.mark.parametrize("name", list(FAMILIES))
def test_counts_equal_processor_call_and_model_features_for_52_sizes(fam, name):
    family, _, g, _ = fam(name)
    assert g.family == family
    assert _compare(fam, name, [[s] for s in ALL_SIZES]) == []
    assert len({g.tokens_for(w, h) for w, h in ALL_SIZES}) > 15  # the counts really depend on the size


def _buggy_count(g: VisionGeometry, w: int, h: int, bug: str) -> int:
    """The single-image count with one of transformers' old bugs put back: ``swap`` (#33261: current
    height and width exchanged in _get_unpadded_features) or ``noround`` (#34625/#35775: int() of the
    scaled side without round(..., 7))."""
    side = g.patches_per_side
    bh, bw = select_best_resolution((h, w), g.grid_pinpoints)
    ch, cw = side * (bh // g.image_size), side * (bw // g.image_size)
    if bug == "swap":
        ch, cw = cw, ch
    fix = (lambda x: int(round(x, 7))) if bug != "noround" else int
    if w / h > cw / ch:
        ch -= (ch - fix(h * (cw / w))) // 2 * 2
    else:
        cw -= (cw - fix(w * (ch / h))) // 2 * 2
    feats, rows = ch * cw, ch
    if g.family == "llava_onevision":
        ratio = math.sqrt(ch * cw / (max_crops(g.vision_aspect_ratio) * side ** 2))
        if ratio > 1.1:
            feats, rows = int(ch // ratio) * int(cw // ratio), int(ch // ratio)
    extra = g.num_additional_image_tokens if g.family == "llava_next" else 0
    return feats + rows + g.tokens_per_crop + extra - (g.vision_feature_select_strategy == "default")


@pytest.mark.parametrize("case", list(REGRESSIONS))
def test_transformers_regression_shapes(fam, case):
    """Each shape alone and in a two-image sample, against the processor call (the model's features for
    the same shapes are compared in the test above: REGRESSIONS are part of ALL_SIZES). Each shape is one
    its issue's bug miscounts, in at least one of the three geometries."""
    w, h = REGRESSIONS[case]
    bug = "swap" if case.startswith("issue33261") else "noround" if case.startswith("issue3") else None
    caught = False
    for name in FAMILIES:
        _, proc, g, _ = fam(name)
        tokens, _ = run_samples(proc, None, g.family, [[_img(w, h)], [_img(w, h), _img(h, w)]])
        assert tokens == [g.tokens_for(w, h), g.tokens_for(w, h, 2) + g.tokens_for(h, w, 2)], name
        assert _buggy_count(g, w, h, "none") == g.tokens_for(w, h)  # the helper is the rule when no bug is put back
        caught |= bug is not None and _buggy_count(g, w, h, bug) != g.tokens_for(w, h)
    assert caught or bug is None, f"{case}: no geometry is sensitive to the {bug} bug"


def test_onevision_multi_image_rule_matches_processor_and_model(fam):
    family, proc, g, model = fam("onevision-siglip384")
    sizes = [(640, 480), (4567, 123), (1, 1)]
    assert _compare(fam, "onevision-siglip384", [sizes[:1], sizes[:2], sizes[:3]]) == []
    # more than one image: base crop + one newline each (730 with SigLIP-384), whatever the size
    assert [g.tokens_for(w, h, 2) for w, h in sizes] == [730] * 3
    assert g.tokens_for(640, 480, 1) == 2929


def test_next_multi_image_sample_counts_each_image_in_full(fam):
    family, proc, g, model = fam("next-clip336-default")
    sizes = [(640, 480), (300, 1000)]
    assert [g.tokens_for(w, h, 2) for w, h in sizes] == [g.tokens_for(w, h) for w, h in sizes]
    assert _compare(fam, "next-clip336-default", [sizes]) == []


def _log_size(rng: random.Random) -> tuple[int, int]:
    return (max(1, int(round(10 ** rng.uniform(0, 3.9)))), max(1, int(round(10 ** rng.uniform(0, 3.9)))))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_property_thousands_of_sizes_and_samples_against_the_processor_rule(fam, name):
    """3000 random sizes (1 to ~8000 px a side) in samples of 1-4 images, against the processor's own
    per-image expansion (``replace_image_token``, what ``__call__`` runs for each placeholder, fed the
    ``image_sizes``/``pixel_values``/``batch_num_images`` layout ``__call__`` builds) -- without resizing
    3000 real images. The full ``__call__`` is compared on real images above and below."""
    family, proc, g, _ = fam(name)
    rng = random.Random(24)
    crop = g.image_size
    pixels = np.zeros((1, 1, 3, crop, crop), dtype=np.float32)  # __call__ reads the crop side from here
    bad, n = [], 0
    while n < 3000:
        k = rng.choice([1, 1, 2, 3, 4])
        sizes = [_log_size(rng) for _ in range(k)]
        inputs = {"image_sizes": [[h, w] for w, h in sizes], "pixel_values": pixels, "batch_num_images": [k]}
        for i, (w, h) in enumerate(sizes):
            theirs = len(proc.replace_image_token(inputs, i)) // len(proc.image_token)
            if g.tokens_for(w, h, k) != theirs:
                bad.append(((w, h), k, g.tokens_for(w, h, k), theirs))
        n += k
    assert bad == [], bad[:10]


def test_property_random_sizes_through_the_full_processor_call(fam):
    """60 random samples (sizes up to 1200 px a side, 1-3 images) through ``__call__`` on real images."""
    rng = random.Random(7)
    for name in FAMILIES:
        _, proc, g, _ = fam(name)
        samples = []
        for _ in range(20):
            k = rng.choice([1, 1, 2, 3])
            samples.append([(rng.randint(1, 1200), rng.randint(1, 1200)) for _ in range(k)])
        for s in samples:  # one sample a call (a batch pads every sample to its largest grid)
            tokens, _ = run_samples(proc, None, g.family, [[_img(w, h) for w, h in s]])
            assert tokens == [sum(g.tokens_for(w, h, len(s)) for w, h in s)], (name, s)


# -- reading processor folders ----------------------------------------------------------------------

def test_geometry_of_each_folder_layout(fam):
    _, _, nxt, _ = fam("next-clip336-default")  # transformers 5 layout: image processor nested
    assert (nxt.family, nxt.image_size, nxt.patch_size, nxt.vision_feature_select_strategy,
            nxt.num_additional_image_tokens) == ("llava_next", 336, 14, "default", 1)
    assert nxt.grid_pinpoints == tuple(map(tuple, next_pinpoints(336)))
    assert nxt.image_processor["image_processor_type"].startswith("LlavaNextImageProcessor")
    _, _, ov, _ = fam("onevision-siglip384")  # hub layout: preprocessor_config.json apart
    assert (ov.family, ov.image_size, ov.patches_per_side, ov.vision_aspect_ratio, ov.num_image_tokens) == \
        ("llava_onevision", 384, 27, "anyres_max_9", 729)
    assert ov.processor["processor_class"] == "LlavaOnevisionProcessor"


def test_manifest_entry_round_trip_and_old_manifests(fam):
    _, _, ov, _ = fam("onevision-siglip384")
    entry = VisionEntry.model_validate(json.loads(json.dumps(ov.to_json())))
    back = entry.geometry()
    assert back == ov and back.image_processor == ov.image_processor and back.processor == ov.processor
    assert back.tokens_for(640, 480) == 2929 and back.exif == "transpose"
    old = VisionEntry(image_size=384, patch_size=14, aspect="pad", tokens_per_image=729, grid_pinpoints=[])
    g = old.geometry()
    assert (g.family, g.exif, g.tokens_for(4567, 123)) == ("llava", "none", 729)
    with pytest.raises(ParsitError, match="old rule"):
        VisionEntry(image_size=384, patch_size=14, aspect="anyres", tokens_per_image=729,
                    grid_pinpoints=[[384, 768]]).geometry()


def _edit(folder, name, fn):
    path = folder / name
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit,file,field", [
    (lambda d: d.update(processor_class="Qwen2VLProcessor"), "processor_config.json", "processor_class"),
    (lambda d: d.pop("patch_size"), "processor_config.json", "patch_size"),
    (lambda d: d.pop("vision_feature_select_strategy"), "processor_config.json", "vision_feature_select_strategy"),
    (lambda d: d["image_processor"].pop("image_grid_pinpoints"), "processor_config.json", "image_grid_pinpoints"),
    (lambda d: d["image_processor"].update(crop_size={"height": 336, "width": 300}), "processor_config.json",
     "crop_size"),
])
def test_bad_next_folder_is_one_error_naming_file_and_field(tmp_path, edit, file, field):
    folder = save_processor(llava_next_processor(**NEXT_CLIP), tmp_path / "p")
    _edit(folder, file, edit)
    with pytest.raises(ParsitError) as err:
        VisionGeometry.from_processor_dir(folder)
    assert file in str(err.value) and field in str(err.value)


@pytest.mark.parametrize("file,edit,field", [
    ("processor_config.json", lambda d: d.pop("num_image_tokens"), "num_image_tokens"),
    ("processor_config.json", lambda d: d.update(vision_aspect_ratio="anyres_max_x"), "vision_aspect_ratio"),
    ("preprocessor_config.json", lambda d: d.pop("image_grid_pinpoints"), "image_grid_pinpoints"),
])
def test_bad_onevision_folder_is_one_error_naming_file_and_field(tmp_path, file, edit, field):
    folder = save_processor(llava_onevision_processor(**OV_SIGLIP), tmp_path / "p")
    _edit(folder, file, edit)
    with pytest.raises(ParsitError) as err:
        VisionGeometry.from_processor_dir(folder)
    assert file in str(err.value) and field in str(err.value)


def test_not_a_processor_folder(tmp_path):
    with pytest.raises(ParsitError, match="not a directory"):
        VisionGeometry.from_processor_dir(tmp_path / "missing")
    (tmp_path / "tok").mkdir()
    with pytest.raises(ParsitError, match="no image processor config"):
        VisionGeometry.from_processor_dir(tmp_path / "tok")
    (tmp_path / "tok" / "processor_config.json").write_text("[1, 2]")
    with pytest.raises(ParsitError, match="processor_config.json: expected a JSON object"):
        VisionGeometry.from_processor_dir(tmp_path / "tok")


@pytest.mark.parametrize("strategy,extra,want", [("default", 1, 576), ("full", 0, 576), ("full", 1, 577)])
def test_plain_llava_processor_folder(tmp_path, strategy, extra, want):
    """LlavaProcessor (CLIP-336): one crop whatever the size; the CLS and the strategy decide the count."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from vision_support import _tokenizer

    ip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    proc = LlavaProcessor(image_processor=ip, tokenizer=_tokenizer(), patch_size=14,
                          vision_feature_select_strategy=strategy, num_additional_image_tokens=extra)
    g = VisionGeometry.from_processor_dir(save_processor(proc, tmp_path / "p"))
    assert (g.family, g.image_size, g.patch_size) == ("llava", 336, 14)
    tokens, _ = run_samples(proc, None, "llava", [[_img(w, h)] for w, h in [(640, 480), (1, 1), (4567, 123)]])
    assert tokens == [want] * 3 == [g.tokens_for(w, h) for w, h in [(640, 480), (1, 1), (4567, 123)]]
