"""LLaVA-NeXT and OneVision exports serve as trained: for every record of a family build,
``AutoProcessor.from_pretrained(export)`` on the record's images and its rendered prompt gives exactly the
ids the collator trains on (each image expanded to the build's count) and the pixels it feeds
(``pixel_values`` per image, ``image_sizes``); the processor is the family's own class.

Three builds: ``--processor`` of a LlavaNextProcessor, of a LlavaOnevisionProcessor (anyres_max_2: large
images downscale; two-image records take the multi-image rule), and ``--aspect anyres`` without a
processor (LLaVA-NeXT's rule on a SigLIP tower, the export writes the processor itself)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from family_support import PINPOINTS, make_family_build  # noqa: E402
from train_helpers import IMAGE_SIZE, PATCH_SIZE  # noqa: E402

from parsit_data.errors import ParsitError  # noqa: E402
from parsit_data.format import bundled_qwen3_tokenizer  # noqa: E402
from parsit_train.serving import write_serving_files  # noqa: E402

CLASSES = {"llava_next": "LlavaNextProcessor", "llava_onevision": "LlavaOnevisionProcessor",
           "anyres": "LlavaNextProcessor"}


def _anyres_build(root: Path) -> Path:
    """The family_support records built with --aspect anyres (no processor folder)."""
    from parsit_data.build import build
    from parsit_data.config import BuildConfig

    make_family_build(root / "src", "llava_next")  # writes records.jsonl and images
    out = root / "build_anyres"
    build(BuildConfig(inputs=[str(root / "src" / "records.jsonl")], out=str(out), image_root=str(root / "src" / "images"),
                      image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, aspect="anyres", grid_pinpoints=PINPOINTS,
                      max_length=256, shard_rows=8))
    return out


@pytest.fixture(scope="module", params=["llava_next", "llava_onevision", "anyres"])
def family_build(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    b = _anyres_build(root) if request.param == "anyres" else make_family_build(root, request.param)
    return request.param, b


def _records(build_dir: Path) -> dict[str, list[dict]]:
    src = json.loads((build_dir / "manifest.json").read_text())["sources"][0]
    path = Path(src.get("path") or src.get("uri") or src["name"])
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out[r["id"]] = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                        for t in r["conversations"]]
    return out


@pytest.mark.timeout(300)
def test_export_processor_reproduces_training_ids_and_pixels(family_build, tmp_path):
    from PIL import Image, ImageOps
    from transformers import AutoProcessor

    from parsit_train.data.collator import Collator
    from parsit_train.data.dataset import ShardDataset
    from parsit_train.data.pixels import FamilyPixels
    from parsit_train.families import allow_onevision_processor

    kind, build_dir = family_build
    manifest = json.loads((build_dir / "manifest.json").read_text())
    note = write_serving_files(tmp_path, bundled_qwen3_tokenizer(), manifest["vision"], manifest["template"], 151655)
    assert not note["image_processor"].startswith("no ")
    allow_onevision_processor()
    processor = AutoProcessor.from_pretrained(str(tmp_path))
    assert type(processor).__name__ == CLASSES[kind]
    records = _records(build_dir)
    pixels = FamilyPixels(manifest["vision"])
    ds = ShardDataset(build_dir, "qwen3", image_processor=pixels)
    collate = Collator(ds.pad_token_id, 151655, 256, image_processor=pixels)
    checked = multi = 0
    for i in range(len(ds)):
        item = ds[i]
        batch = collate([item])
        ids, labels = batch.input_ids[0].numpy(), batch.labels[0].numpy()
        start = int(np.flatnonzero(labels != -100)[0])
        messages = records[item["sample_id"]]
        prompt = processor.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
        # the images as stored, displayed as transformers' load_image shows them (EXIF applied)
        images = [ImageOps.exif_transpose(Image.open(io.BytesIO(b))).convert("RGB") for b in _stored_images(ds, i)]
        enc = processor(text=prompt, images=[images] if images else None, return_tensors="np")
        assert enc["input_ids"][0].tolist() == ids[:start].tolist(), item["sample_id"]
        if images:
            got, want = enc["pixel_values"], batch.pixel_values.numpy()
            assert got.shape[0] == want.shape[0] == len(images)
            for j in range(len(images)):
                n = item["crops_per_image"][j]
                np.testing.assert_allclose(got[j][:n], want[j][:n], atol=1e-5, rtol=0)
            assert enc["image_sizes"].tolist() == batch.image_sizes.tolist()
            if kind == "llava_onevision":
                assert enc["batch_num_images"].tolist() == batch.batch_num_images.tolist() == [len(images)]
            multi += len(images) > 1
            checked += 1
    assert checked >= 12 and multi >= 4


def _stored_images(ds, i: int) -> list[bytes]:
    """The encoded image bytes of row ``i`` (a dataset without image processor returns them)."""
    keep, ds.image_processor = ds.image_processor, None
    try:
        return ds[i]["images"]
    finally:
        ds.image_processor = keep


def test_an_old_anyres_manifest_is_refused_not_served_differently(tmp_path):
    old = {"image_size": 384, "patch_size": 14, "aspect": "anyres", "grid_pinpoints": [[384, 768], [768, 384]]}
    with pytest.raises(ParsitError, match="rebuild"):
        write_serving_files(tmp_path, bundled_qwen3_tokenizer(), old,
                            {"name": "qwen_1_5", "system_prompt": None, "label_policy": "native"}, 151655)
