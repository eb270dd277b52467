"""The trainer's typed data path (issue 24 item 4): the build view read once per rank, objects complete when
constructed and frozen after, a typed Batch out; and plain LLaVA from a ``LlavaProcessor`` folder fed exactly
(CLIP pixels, the ``full`` strategy's CLS) with the model's image token id derived from the build."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import IMAGE_SIZE, PATCH_SIZE, TINY_LM, TINY_VISION, free_port, make_build  # noqa: E402
from train_helpers import tiny_config, write_config  # noqa: E402
from train_support import QWEN_IMAGE_PAD, open_loader  # noqa: E402

from parsit_data.errors import ParsitError  # noqa: E402
from parsit_train.data.batch import PIXELS, Batch  # noqa: E402
from parsit_train.data.collator import Collator  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).parent / "manifest_reads_worker.py"
VISION_PAD = 151654  # Qwen3's <|vision_pad|>: the placeholder of the LlavaProcessor folder below


# --- no object changed after it is built -------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_loader_objects_are_complete_when_built_and_refuse_changes(tmp_path):
    build = make_build(tmp_path / "data", n=2, n_text=4)
    loader, _ = open_loader([build], batch_size=2, max_length=256, shuffle=False, blank_image=True)
    collator = loader.collator
    # the blank image is known before the collator exists: the build's geometry (28 / 14 -> 4 tokens)
    assert collator.blank_image == (IMAGE_SIZE, (IMAGE_SIZE // PATCH_SIZE) ** 2)
    with pytest.raises(AttributeError, match="frozen"):
        collator.blank_image = (IMAGE_SIZE, 4)
    with pytest.raises(AttributeError, match="frozen"):
        collator.image_token_id = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        loader.dataset.view.max_length = 1
    text_only = [b for b in loader if not any(s.startswith("rec-") for s in b.sample_ids)]
    assert text_only, "the build has text-only batches"
    batch = text_only[0]
    assert isinstance(batch, Batch) and batch.pixel_values.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert int((batch.input_ids == QWEN_IMAGE_PAD).sum()) == 4 and batch.data_position is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.input_ids = batch.input_ids[:1]


def test_a_built_collator_is_frozen_and_survives_the_trip_to_a_worker():
    import pickle

    c = Collator(151643, 151655, 64, blank_image=(28, 4))
    with pytest.raises(AttributeError):
        c.max_length = 8
    with pytest.raises(AttributeError):
        del c.max_length
    copy = pickle.loads(pickle.dumps(c))  # what a DataLoader worker receives
    assert copy.blank_image == (28, 4) and copy.max_length == 64
    with pytest.raises(AttributeError):
        copy.blank_image = None


def test_batch_moves_and_feeds_by_field_metadata_so_a_new_input_is_one_field(monkeypatch):
    ids = torch.tensor([[1, 2, 3]])
    base = dict(input_ids=ids, labels=ids, targets=ids, sample_ids=("a",), num_tokens=3, num_padded=3,
                num_supervised=2, num_samples_supervised=1)
    b = Batch(**base, attention_mask=torch.ones_like(ids), pixel_values=torch.zeros(1, 3, 2, 2),
              batch_num_images=torch.tensor([1]))
    moved = b.to("cpu", torch.bfloat16)
    assert moved.pixel_values.dtype == torch.bfloat16 and moved.input_ids.dtype == torch.long
    assert moved.batch_num_images is b.batch_num_images  # kept on the host, as the model reads it
    assert set(b.model_inputs()) == {"input_ids", "attention_mask", "pixel_values", "batch_num_images"}
    # DataLoader(pin_memory=True) pins a Batch through its own pin_memory (no CUDA here: count the calls)
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: pinned.append(self) or self)
    out = pin_memory(b)
    assert isinstance(out, Batch) and out.sample_ids == ("a",) and len(pinned) == 6

    @dataclasses.dataclass(frozen=True)
    class WithVideo(Batch):  # what the video branch adds: one field
        pixel_values_videos: torch.Tensor | None = dataclasses.field(default=None, metadata=PIXELS)

    v = WithVideo(**base, pixel_values_videos=torch.zeros(1, 2, 3, 2, 2))
    assert "pixel_values_videos" in v.model_inputs()
    assert v.to("cpu", torch.float16).pixel_values_videos.dtype == torch.float16


# --- one manifest read per build per rank -----------------------------------------------------------------
@pytest.mark.timeout(240)
@pytest.mark.parametrize("started", ["directly", "by_launch"])
def test_each_rank_reads_each_manifest_once_in_a_real_two_rank_run(tmp_path, started):
    """Two ranks, two builds, a real run (data, model, checkpoints, export): each rank reads each manifest once.
    Started directly, local rank 0 hashes the shards; started by launch (its stamp written by the launch's
    own check), no rank hashes, and the stamp is checked against the manifests the ranks already read."""
    a = make_build(tmp_path / "a", n=8)
    b = make_build(tmp_path / "b", n=4, n_text=4)
    cfg = tiny_config(a, tmp_path / "out", optim={"micro_batch_size": 2, "max_steps": 2, "schedule": "constant",
                                                 "lr": {"projector": 1e-3, "vision_tower": 1e-3, "language_model": 1e-3}},
                      checkpoint={"export_hf": True, "every_steps": 1})
    cfg["data"] = {"builds": [str(a), {"path": str(b), "weight": 0.5}]}
    path = write_config(tmp_path / "train.yaml", cfg)
    launch_env = {}
    if started == "by_launch":
        from parsit_train.config import load_config
        from parsit_train.faults import LAUNCH_DIR_ENV
        from parsit_train.preflight import verify_before_launch

        folder = tmp_path / "launch"
        folder.mkdir()
        verify_before_launch(load_config(path), folder)
        launch_env = {LAUNCH_DIR_ENV: str(folder)}
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu",
               "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **launch_env}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(path), str(tmp_path / f"r{rank}.json")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=200)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(x[-3000:] for x in logs)
    want = {str((a / "manifest.json").resolve()): 1, str((b / "manifest.json").resolve()): 1}
    for rank in range(2):
        r = json.loads((tmp_path / f"r{rank}.json").read_text())
        assert r["steps"] == 2 and r["before_train"] == {}
        assert r["reads"] == want, (rank, r["reads"])  # data, model, checkpoints and export: one read each
        assert r["hashed"] == ([2] if started == "directly" and rank == 0 else []), (rank, r["hashed"])
    assert (tmp_path / "out" / "hf" / "config.json").is_file()


# --- plain LLaVA from a LlavaProcessor folder: fed exactly, image token derived ---------------------------
CLIP_SIZES = [(40, 30), (30, 50), (90, 20), (28, 28), (1, 1), (57, 123), (300, 29)]


def _llava_processor_dir(root: Path) -> Path:
    """A llava-hf style LlavaProcessor folder: CLIP image processor (shortest edge 28, centre crop 28, CLIP
    mean/std), patch 14, strategy full (CLS kept: 5 tokens per image), placeholder <|vision_pad|>."""
    from transformers import AutoTokenizer, CLIPImageProcessorPil, LlavaProcessor

    from parsit_data.format import bundled_qwen3_tokenizer

    tok = AutoTokenizer.from_pretrained(str(bundled_qwen3_tokenizer()))
    ip = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=PATCH_SIZE, vision_feature_select_strategy="full",
                          num_additional_image_tokens=1, image_token="<|vision_pad|>")
    out = root / "proc_llava"
    proc.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def llava_build(tmp_path_factory):
    from PIL import Image

    from parsit_data.build import build
    from parsit_data.config import BuildConfig

    root = tmp_path_factory.mktemp("llava_proc")
    proc = _llava_processor_dir(root)
    images = root / "images"
    images.mkdir()
    records = []
    for i, (w, h) in enumerate(CLIP_SIZES):
        rng = np.random.default_rng(i)  # varied pixels: resizing and cropping show in every value
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"img{i}.png")
        records.append({"id": f"rec-{i:03d}", "image": f"img{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": f"Picture {i}."}]})
    src = root / "records.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = root / "build"
    build(BuildConfig(inputs=[str(src)], out=str(out), image_root=str(images), processor=str(proc), tokenizer="qwen3",
                      max_length=256, shard_rows=4))
    return proc, out


def _model_section(build: Path, **model):
    from parsit_train.config import ModelConfig
    from parsit_train.data import open_view
    from parsit_train.families import model_section

    clip = {**TINY_VISION, "model_type": "clip_vision_model"}
    mcfg = ModelConfig(vision_tower={"config": clip}, language_model={"config": dict(TINY_LM)},
                       vision_feature_layer=-1, **model)
    view = open_view([build], "qwen3")
    return model_section(mcfg, view), view


@pytest.mark.timeout(300)
def test_a_llava_processor_build_is_fed_exactly_as_llava_processor_and_its_model(llava_build, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor

    from parsit_train.model import build_model, check_compatibility
    from parsit_train.train import forward_loss

    proc_dir, build = llava_build
    mcfg, view = _model_section(build)
    assert mcfg.image_token_id == VISION_PAD  # derived from the build's placeholder, not the 151655 default
    processor = AutoProcessor.from_pretrained(str(proc_dir))
    assert type(processor).__name__ == "LlavaProcessor"
    from parsit_train.serving import write_serving_files

    write_serving_files(tmp_path / "export", view.tokenizer, view.vision, view.template, mcfg.image_token_id)
    served = AutoProcessor.from_pretrained(str(tmp_path / "export"))  # what the export serves with
    loader, _ = open_loader([build], image_token_id=mcfg.image_token_id, batch_size=1, max_length=256,
                            shuffle=False, drop_last=False)
    torch.manual_seed(0)
    model = build_model(mcfg, view.vision).eval()
    check_compatibility(model, view.vision, view.vocab_size)
    assert model.config.vision_feature_select_strategy == "full" and model.config.image_token_id == VISION_PAD
    seen = 0
    for batch in loader:
        i = int(batch.sample_ids[0].split("-")[1])
        image = Image.open(io.BytesIO(_stored_image(loader.dataset, batch.sample_ids[0]))).convert("RGB")
        assert image.size == CLIP_SIZES[i]
        enc = processor(images=[image], text="<|vision_pad|>\nDescribe it.", return_tensors="pt")
        np.testing.assert_allclose(batch.pixel_values.numpy(), enc["pixel_values"].numpy(), atol=1e-5, rtol=0)
        again = served(images=[image], text="<|vision_pad|>\nDescribe it.", return_tensors="pt")
        assert torch.equal(again["input_ids"], enc["input_ids"])
        np.testing.assert_allclose(again["pixel_values"].numpy(), enc["pixel_values"].numpy(), atol=1e-6, rtol=0)
        tokens = int((enc["input_ids"] == VISION_PAD).sum())
        assert tokens == 5 == int((batch.input_ids == VISION_PAD).sum())  # 2x2 patches + CLS (full)
        with torch.no_grad():
            feats = model.model.get_image_features(pixel_values=batch.pixel_values,
                                                   vision_feature_layer=-1, vision_feature_select_strategy="full")
            feats = getattr(feats, "pooler_output", feats)
            n = sum(f.shape[0] for f in feats) if isinstance(feats, (list, tuple)) else feats.reshape(-1, feats.shape[-1]).shape[0]
            assert n == tokens
            assert torch.isfinite(forward_loss(model, batch, "cpu", torch.float32))  # features scatter 1:1
        seen += 1
    assert seen == len(CLIP_SIZES)


def _stored_image(dataset, sample_id: str) -> bytes:
    from parsit_data.format import read_shard

    for build in dataset.builds:
        for path in build.shard_paths:
            table = read_shard(path)
            ids = table.column("sample_id").to_pylist()
            if sample_id in ids:
                return table.column("images")[ids.index(sample_id)].as_py()[0]
    raise KeyError(sample_id)


def test_a_model_id_that_disagrees_with_the_builds_placeholder_is_refused_naming_both(llava_build, tmp_path):
    _, build = llava_build
    with pytest.raises(ParsitError, match=r"model.image_token_id is 151655.*<\|vision_pad\|>.*151654"):
        _model_section(build, image_token_id=151655)
    assert _model_section(build, image_token_id=VISION_PAD)[0].image_token_id == VISION_PAD
    # an existing model folder with another image token id
    from parsit_train.config import ModelConfig
    from parsit_train.data import open_view
    from parsit_train.families import model_section
    from parsit_train.model import build_model

    mcfg, view = _model_section(build)
    folder = tmp_path / "other"
    build_model(mcfg.model_copy(update={"image_token_id": QWEN_IMAGE_PAD}), view.vision).save_pretrained(str(folder))
    with pytest.raises(ParsitError, match=r"init_from .* image_token_id 151655.*<\|vision_pad\|>.*151654"):
        model_section(ModelConfig(init_from=folder), open_view([build], "qwen3"))


@pytest.mark.timeout(300)
def test_onevision_model_config_gets_the_builds_image_and_video_token_ids(tmp_path):
    from family_support import make_family_build

    from parsit_train.config import ModelConfig
    from parsit_train.data import open_view
    from parsit_train.families import model_section
    from parsit_train.model import llava_config

    build = make_family_build(tmp_path, "llava_onevision", n=2, n_multi=0, n_text=1)
    view = open_view([build], "qwen3")
    mcfg = model_section(ModelConfig(vision_tower={"config": dict(TINY_VISION)}, language_model={"config": dict(TINY_LM)},
                                     image_token_id=151655), view)
    assert (mcfg.image_token_id, mcfg.video_token_id) == (151655, 151656)  # <|image_pad|>, <|video_pad|>
    cfg = llava_config(mcfg, view.vision)
    assert (cfg.image_token_id, cfg.video_token_id) == (151655, 151656)
