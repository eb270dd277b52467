"""The OneVision export's video processor reproduces training: pixels and ids of video records.

``LlavaOnevisionVideoProcessor`` needs torchvision, which does not import beside the project venv's torch
2.13 CPU build. These tests therefore run in a side venv with torch 2.14.1 + torchvision 0.29.1
(``scripts/video_parity.sh`` makes it and runs this file with ``PARSIT_REQUIRE_TORCHVISION=1``; ``.ci/run``
calls the script after the suite). In the project venv each test is SKIPPED with that reason, never passed;
with ``PARSIT_REQUIRE_TORCHVISION=1`` a missing torchvision is a failure.

1. :class:`VideoPixels` (the trainer) against the video processor on the same decoded frames: frames at the
   processor's size (the default build), off-size frames (``--video-max-side``) with bicubic and bilinear, the
   video processor's own mean/std (OpenAI CLIP by class default, not the image processor's).
2. A real build of video + image + text records (tests/data/video_support.py clips, a OneVision
   ``--processor`` folder): ``AutoProcessor.from_pretrained(export)`` given the training frames of each video
   record and its rendered prompt gives the collator's ids (the video expanded to ``num_video_tokens`` of the
   model's video token) and the trainer's ``pixel_values_videos``.
3. Given the RAW clip and the build's frame count, the processor samples frames by transformers' rule
   (``arange(N) * total // N``), not LLaVA-NeXT's ``linspace(0, total - 1, N)`` that the build uses: the test
   asserts what is true (docs/VIDEO.md says it).
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "data"))

from parsit_train.data.video_pixels import VideoPixels  # noqa: E402


def _torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
        from torchvision.transforms.v2 import functional  # noqa: F401

        return True
    except Exception:  # noqa: BLE001 - absent, or present but broken beside this torch
        return False


if not _torchvision():
    if os.environ.get("PARSIT_REQUIRE_TORCHVISION") == "1":
        raise RuntimeError("PARSIT_REQUIRE_TORCHVISION=1 but torchvision does not import: run scripts/video_parity.sh")
    pytest.skip("the video processor needs torchvision, which does not import beside this venv's torch: "
                "scripts/video_parity.sh runs these tests in a side venv (.ci/run does)", allow_module_level=True)

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _frames(n: int, h: int, w: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return [_jpeg(np.roll(base, 7 * i, axis=1)) for i in range(n)]


def _decoded(frames: list[bytes]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in frames])


@pytest.mark.parametrize("shape,resample", [((56, 56), "bicubic"), ((61, 97), "bicubic"), ((90, 40), "bilinear"),
                                            ((56, 56), "bilinear")])
def test_trainer_pixels_are_the_video_processors(shape, resample):
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    entry = {"size": {"height": 56, "width": 56}, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
             "rescale_factor": 1 / 255, "resample": resample}
    frames = _frames(3, *shape)
    ours = VideoPixels(entry).process(frames, "s")
    proc = LlavaOnevisionVideoProcessor(size={"height": 56, "width": 56}, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                                        resample={"bicubic": 3, "bilinear": 2}[resample])
    theirs = proc(videos=[_decoded(frames)], return_tensors="pt")["pixel_values_videos"][0]
    assert ours.shape == theirs.shape == (3, 3, 56, 56)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("total,frames", [(300, 8), (50, 16), (10, 4), (6, 8)])
def test_processor_samples_a_raw_clip_by_its_own_rule_not_the_builds(tmp_path, total, frames):
    """The export's processor, asked to sample the raw clip itself with the build's frame count
    (``do_sample_frames=True, num_frames=N``; decoded here with transformers' own ``load_video`` on PyAV, as
    torchcodec is not installed), takes ``arange(N) * total // N``; the build takes LLaVA-NeXT's
    ``linspace(0, total - 1, N)``: same count, other frames (the build's last is the clip's last frame, the
    processor's is not), and a clip shorter than N, which the build keeps whole, is an error for the processor. The frames are
    read back from their pixels (each carries its index), not trusted from metadata."""
    from functools import partial

    from transformers.video_utils import load_video
    from video_support import make_clip, read_index

    from parsit_data.video import sample_indices
    from parsit_train.video_serving import video_processor_for

    clip = make_clip(tmp_path / "clip.mp4", total, size=(160, 96))
    proc = video_processor_for({"size": {"height": 56, "width": 56}, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
                                "rescale_factor": 1 / 255, "resample": "bicubic", "frames": frames})
    assert proc.num_frames == frames and not proc.do_sample_frames
    build = sample_indices(total, 25.0, frames)
    if total < frames:
        assert build == list(range(total))  # the build keeps a short clip whole
        with pytest.raises(ValueError, match="exceeds total_num_frames"):
            load_video(str(clip), backend="pyav", sample_indices_fn=partial(proc.sample_frames, num_frames=frames))
        return
    video, meta = load_video(str(clip), backend="pyav", sample_indices_fn=partial(proc.sample_frames, num_frames=frames))
    seen = [read_index(np.asarray(f)) for f in video]
    hf = (np.arange(frames) * total // frames).tolist()
    assert seen == hf == list(meta.frames_indices)
    assert build == np.linspace(0, total - 1, frames, dtype=int).tolist()
    assert build[0] == hf[0] == 0 and build[-1] == total - 1 > hf[-1]  # the build reaches the last frame
    assert build != hf  # the processor does not reproduce the build's frames from the raw clip


@pytest.mark.timeout(300)
def test_export_processor_reproduces_training_ids_and_pixels_of_video_records(tmp_path):
    """A real build (video, image, text records; a 3-frame clip kept whole beside 4-frame ones): the export's
    ``AutoProcessor`` given each video record's stored frames and its rendered prompt makes the ids the
    collator trains on up to the reply (the video expanded to the row's ``num_video_tokens`` of the model's
    video token) and the trainer's ``pixel_values_videos``; image and text records as before."""
    import json

    from PIL import Image
    from transformers import AutoProcessor
    from video_train_support import make_video_build

    from parsit_data.format import bundled_qwen3_tokenizer
    from parsit_train.data.collator import Collator
    from parsit_train.data.dataset import ShardDataset
    from parsit_train.data.pixels import FamilyPixels
    from parsit_train.serving import write_serving_files

    build_dir = make_video_build(tmp_path / "b")
    manifest = json.loads((build_dir / "manifest.json").read_text())
    export = tmp_path / "hf"
    write_serving_files(export, bundled_qwen3_tokenizer(), manifest["vision"], manifest["template"], 151655,
                        video=manifest["video"])
    processor = AutoProcessor.from_pretrained(str(export))
    assert type(processor).__name__ == "LlavaOnevisionProcessor" and processor.video_token_id == 151656
    pixels = FamilyPixels(manifest["vision"])
    ds = ShardDataset(build_dir, "qwen3", image_processor=pixels)  # its video pixels: the build view's entry
    raw = ShardDataset(build_dir, "qwen3", decode_video=False)  # the stored JPEGs, for the processor
    assert isinstance(ds.video_pixels, VideoPixels) and ds.video_pixels.video_token_id == 151656
    collate = Collator(ds.pad_token_id, 151655, 256, image_processor=pixels, video_token_id=151656,
                       video_processor=ds.video_pixels)
    records = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "b" / "records.jsonl").read_text().splitlines()}
    counts, both = set(), 0
    for i in range(len(ds)):
        item = ds[i]
        rec = records[item["sample_id"]]
        if "video" not in rec:
            continue
        batch = collate([item])
        ids, labels = batch.input_ids[0].numpy(), batch.labels[0].numpy()
        start = int(np.flatnonzero(labels != -100)[0])
        question = rec["conversations"][0]["value"]
        if "image" not in rec:
            question = question.replace("<image>", "<video>")  # LLaVA-Video's spelling, rewritten by the build
        prompt = processor.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                               tokenize=False)
        jpegs = raw[i]["video_frames"]
        frames = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in jpegs])
        images = None
        if "image" in rec:
            images = [[Image.open(tmp_path / "b" / "media" / rec["image"]).convert("RGB")]]
            both += 1
        enc = processor(text=prompt, images=images, videos=[frames], return_tensors="pt")
        assert enc["input_ids"][0].tolist() == ids[:start].tolist(), item["sample_id"]
        assert int((enc["input_ids"] == 151656).sum()) == item["num_video_tokens"]
        torch.testing.assert_close(enc["pixel_values_videos"][0], batch.pixel_values_videos[0], rtol=0, atol=1e-5)
        if images:
            n = item["crops_per_image"][0]
            torch.testing.assert_close(enc["pixel_values"][0][:n], batch.pixel_values[0][:n], rtol=0, atol=1e-5)
            assert int((enc["input_ids"] == 151655).sum()) == sum(item["num_image_tokens"])
        counts.add(len(jpegs))
    assert counts == {3, 4} and both == 1
