"""OneVision trains on a real build of video, image and text records (tests/train/video_train_support.py):
the video rows reach the model and its logits (a video-only micro-batch moves the vision tower and the
projector, and its loss depends on the frames), packed runs on 2 gloo ranks mix the three kinds under
ZeRO-2 and ZeRO-3 (the blank video), export a OneVision folder whose video processor is the build's, and a
stopped run resumes with the same packs and losses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from family_support import family_config  # noqa: E402
from train_helpers import TINY_LM, free_port, read_metrics, write_config  # noqa: E402
from video_train_support import VIDEO_FRAMES, make_video_build  # noqa: E402

from parsit_train.launch import LaunchSpec, launch  # noqa: E402

TIMEOUT = 240
QWEN2 = {k: v for k, v in TINY_LM.items() if k != "head_dim"} | {"model_type": "qwen2"}
VIDEO_ID = 151656


@pytest.fixture(scope="module")
def video_build(tmp_path_factory) -> Path:
    return make_video_build(tmp_path_factory.mktemp("vt"))


def _view_and_model_section(build: Path, tmp_path: Path):
    from parsit_data.format import bundled_qwen3_tokenizer
    from parsit_train.config import parse_config
    from parsit_train.data import open_view
    from parsit_train.families import model_section

    cfg = parse_config(family_config(build, tmp_path / "o"), tmp_path)
    view = open_view([build], bundled_qwen3_tokenizer(), max_length=256)
    return cfg, view, model_section(cfg.model, view)


def _loader(view, cfg, **spec):
    from parsit_train.config import DataLoaderConfig
    from parsit_train.data import BatchSpec, build_dataloader

    return build_dataloader(view, cfg.data, DataLoaderConfig(num_workers=0),
                            BatchSpec(batch_size=2, image_token_id=151655, shuffle=False, **spec))


def _model_and_loader(build: Path, tmp_path: Path):
    """The model and the loader as the trainer makes them: the video token id derived from the build view
    (model section) before either exists; the model checked against the collator, nothing set afterwards."""
    from parsit_train.model import build_model
    from parsit_train.video_model import check_video_model

    cfg, view, mcfg = _view_and_model_section(build, tmp_path)
    torch.manual_seed(0)
    model = build_model(mcfg, view.vision)
    loader = _loader(view, cfg, video_token_id=mcfg.video_token_id)
    check_video_model(loader.collator, model.config)
    return model, loader


@pytest.mark.timeout(120)
def test_video_rows_reach_the_logits_and_train_the_vision_side(video_build, tmp_path):
    from parsit_train.train import forward_loss

    model, loader = _model_and_loader(video_build, tmp_path)
    assert model.config.video_token_id == VIDEO_ID == loader.collator.video_token_id
    ds = loader.dataset
    videos = [i for i in range(len(ds)) if ds[i]["num_video_tokens"]]
    frames = sorted({ds[i]["video_frame_count"] for i in videos})
    assert frames == [3, VIDEO_FRAMES]  # the 3-frame clip kept whole beside 4-frame ones
    short = next(i for i in videos if ds[i]["video_frame_count"] == 3)
    long = next(i for i in videos if ds[i]["video_frame_count"] == VIDEO_FRAMES)
    batch = loader.collator([ds[short], ds[long]])  # ragged: 3 and 4 frames in one micro-batch
    assert batch.pixel_values is None and [v.shape[0] for v in batch.pixel_values_videos] == [3, VIDEO_FRAMES]
    assert int((batch.input_ids == VIDEO_ID).sum()) == (3 + 1) + (VIDEO_FRAMES + 1)
    supervised = ds.supervised_tokens()  # the token-exact loss's denominators, from the build
    assert batch.num_supervised == int(supervised[short] + supervised[long]) > 0
    model.train()
    loss = forward_loss(model, batch, "cpu", torch.float32)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    tower = sum(float(p.grad.abs().sum()) for p in model.model.vision_tower.parameters() if p.grad is not None)
    proj = sum(float(p.grad.abs().sum()) for p in model.model.multi_modal_projector.parameters() if p.grad is not None)
    assert tower > 0 and proj > 0 and float(model.model.image_newline.grad.abs().sum()) > 0
    model.zero_grad()
    with torch.no_grad():  # other frames, other loss: the frames reach the logits
        moved = batch.replace(pixel_values_videos=tuple(v.flip(-1) for v in batch.pixel_values_videos))
        assert forward_loss(model, moved, "cpu", torch.float32).item() != pytest.approx(loss.item(), rel=1e-6)


def test_video_tokens_count_as_vision_work_for_rank_balance(video_build, tmp_path):
    """The packer balances the vision tower's work across ranks by ``visual_tokens``: a video row's tokens
    count there as an image's do (the build's length already holds them)."""
    from parsit_train.data.dataset import ShardDataset

    ds = ShardDataset(video_build, "qwen3")
    work = ds.visual_tokens()
    for i in range(len(ds)):
        item = ds[i]
        assert work[i] == sum(item["num_image_tokens"]) + item["num_video_tokens"], item["sample_id"]
    assert sum(ds[i]["num_video_tokens"] > 0 for i in range(len(ds))) == 10
    both = next(i for i in range(len(ds)) if ds[i]["sample_id"] == "both-000")
    assert work[both] == sum(ds[both]["num_image_tokens"]) + VIDEO_FRAMES + 1 > VIDEO_FRAMES + 1


@pytest.mark.timeout(120)
def test_loader_video_throughput_counts_every_video_row_of_an_epoch(video_build):
    """The benchmark's loader measure (parsit_train.data.video_throughput) over one epoch: every video row's
    frames reached a batch (10 videos, 3 of them the 3-frame clip), nothing else counted as video."""
    from parsit_train.data.video_throughput import loader_video_throughput

    r = loader_video_throughput(video_build, "qwen3", batch_size=7, num_workers=0, warmup_batches=0)  # 21 rows: 3 full
    assert r["samples"] == 21 and r["video_samples"] == 10
    assert r["frames"] == 3 * 3 + 7 * VIDEO_FRAMES
    assert r["video_samples_per_s"] > 0 and r["seconds"] > 0


@pytest.mark.timeout(120)
def test_a_model_whose_video_token_is_not_the_builds_is_refused(video_build, tmp_path):
    from parsit_data.errors import ParsitError
    from parsit_train.video_model import check_video_model

    model, loader = _model_and_loader(video_build, tmp_path)
    assert loader.collator.video_processor.video_token_id == VIDEO_ID  # <|video_pad|> in the run's tokenizer
    model.config.video_token_id = 151647
    with pytest.raises(ParsitError, match="set model.video_token_id: 151656"):
        check_video_model(loader.collator, model.config)


def test_the_collators_video_token_and_blank_video_are_decided_before_it_is_built(video_build, tmp_path):
    """The video token id comes from the build view (the model section), before any model: a loader for
    another id, or for none, is refused when it is built; the trainer's loader (open_data) has the build's
    id and, as the rows hold videos, the blank video, with no attribute set after construction."""
    from parsit_data.errors import ParsitError
    from parsit_train.config import parse_config
    from parsit_train.train import open_data

    cfg, view, mcfg = _view_and_model_section(video_build, tmp_path)
    assert mcfg.video_token_id == VIDEO_ID and cfg.model.video_token_id is None
    with pytest.raises(ParsitError, match="set model.video_token_id: 151656"):
        _loader(view, cfg, video_token_id=151647)
    with pytest.raises(ParsitError, match="no video token id"):
        _loader(view, cfg)
    assert not _loader(view, cfg, video_token_id=VIDEO_ID).collator.blank_video  # no blank_image: none
    run = parse_config(family_config(video_build, tmp_path / "r", dataloader={"num_workers": 0}), tmp_path)
    data = open_data(run, 0, 1, verify_checksums=False)
    col = data.loader.collator
    assert data.model.video_token_id == VIDEO_ID == col.video_token_id and col.blank_video
    assert col.video_processor.tokens_per_frame == 1  # a video of n frames is n + 1 tokens in this build
    text = next(i for i in range(len(data.loader.dataset)) if not data.loader.dataset[i]["num_video_tokens"])
    blank = col([data.loader.dataset[text]])
    assert len(blank.pixel_values_videos) == 1 and blank.pixel_values_videos[0].shape[0] == 1


def _run_cfg(build: Path, out: Path, zero: int, **over) -> dict:
    return family_config(build, out, lm=QWEN2,
                         data={"builds": [str(build)], "pack_length": 120, "max_images_per_pack": 6},
                         optim={"micro_batch_size": 1, "gradient_accumulation_steps": over.pop("gas", 1),
                                "max_steps": 3, "schedule": "constant",
                                "lr": {"projector": 1e-2, "vision_tower": 1e-3, "language_model": 1e-3}},
                         deepspeed={"zero_stage": zero, "bf16": False}, **over)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("zero", [2, 3])
def test_packed_video_image_text_run_trains_and_exports_the_video_processor(video_build, zero, tmp_path):
    from transformers import AutoConfig

    out = tmp_path / "run"
    cfg = _run_cfg(video_build, out, zero, checkpoint={"export_hf": True, "every_steps": 3})
    assert launch(LaunchSpec(config=write_config(tmp_path / "t.yaml", cfg), nproc=2, master_port=free_port(),
                             timeout_s=TIMEOUT)) == 0
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and 0 < r["supervised_tokens"] < r["tokens"] for r in rows)
    seen = {sid.split("-")[0] for r in rows for sid in (r["sample_ids"] if isinstance(r["sample_ids"][0], str)
                                                       else [s for rank in r["sample_ids"] for s in rank])}
    assert {"vid", "img", "txt"} <= seen, seen
    assert AutoConfig.from_pretrained(str(out / "hf")).video_token_id == VIDEO_ID
    vp = json.loads((out / "hf" / "processor_config.json").read_text()).get("video_processor") or json.loads(
        (out / "hf" / "video_preprocessor_config.json").read_text())
    manifest = json.loads((video_build / "manifest.json").read_text())["video"]
    assert vp["size"] == manifest["size"] and vp["image_mean"] == manifest["image_mean"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_stopped_video_run_resumes_with_the_same_packs_and_losses(video_build, tmp_path):
    import shutil

    cfg = _run_cfg(video_build, tmp_path / "ref", 2, gas=2, checkpoint={"export_hf": False, "every_steps": 1})
    ref = tmp_path / "ref"
    assert launch(LaunchSpec(config=write_config(tmp_path / "ref.yaml", cfg), nproc=2, master_port=free_port(),
                             timeout_s=TIMEOUT)) == 0
    stopped = tmp_path / "stopped"
    spec = write_config(tmp_path / "stop.yaml", {**cfg, "output_dir": str(stopped)})
    assert launch(LaunchSpec(config=spec, nproc=2, master_port=free_port(), timeout_s=TIMEOUT, stop_after=1)) == 0
    resumed = tmp_path / "resumed"
    shutil.copytree(stopped, resumed)
    spec = write_config(tmp_path / "resume.yaml", {**cfg, "output_dir": str(resumed)})
    assert launch(LaunchSpec(config=spec, nproc=2, master_port=free_port(), timeout_s=TIMEOUT)) == 0
    want, got = read_metrics(ref), read_metrics(resumed)
    assert [r["step"] for r in got] == [1, 2, 3]
    assert any("vid-" in json.dumps(r["sample_ids"]) for r in want)
    for a, b in zip(got, want, strict=True):
        assert a["sample_ids"] == b["sample_ids"] and a["tokens"] == b["tokens"], a["step"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6), a["step"]
