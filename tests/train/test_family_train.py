"""The trainer on LLaVA-NeXT and OneVision builds: the family's model is built from the manifest, with any
causal LM as text_config (Llama, Qwen2, Qwen3); packed runs on 2 gloo ranks train every part, ``image_newline``
with the projector; the exports load as the family's class; ZeRO-3 runs a OneVision model; a model and a
build that disagree are refused by ``launch`` before any rank starts, naming both."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from family_support import family_config, make_family_build  # noqa: E402
from train_helpers import TINY_LM, write_config  # noqa: E402
from train_helpers import free_port, read_metrics  # noqa: E402

from parsit_data.errors import ParsitError  # noqa: E402
from parsit_train.launch import LaunchSpec, launch  # noqa: E402

TIMEOUT = 240
LMS = {
    "llama": {k: v for k, v in TINY_LM.items()} | {"model_type": "llama"},
    "qwen2": {k: v for k, v in TINY_LM.items() if k != "head_dim"} | {"model_type": "qwen2"},
    "qwen3": dict(TINY_LM),
}
CLASSES = {"llava_next": "LlavaNextForConditionalGeneration", "llava_onevision": "LlavaOnevisionForConditionalGeneration"}


@pytest.fixture(scope="module")
def fam_builds(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fam")
    return {f: make_family_build(root / f, f) for f in ("llava_next", "llava_onevision")}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("family", "lm"), [("llava_next", "llama"), ("llava_onevision", "qwen2"),
                                            ("llava_onevision", "qwen3")])
def test_the_family_model_takes_the_collated_batches_and_image_newline_is_the_projectors(fam_builds, family, lm,
                                                                                        tmp_path):
    from parsit_data.format import bundled_qwen3_tokenizer
    from parsit_train.config import parse_config
    from train_support import open_loader
    from parsit_train.model import build_model, check_compatibility, param_groups, set_trainable
    from parsit_train.train import forward_loss

    build = fam_builds[family]
    vision = json.loads((build / "manifest.json").read_text())["vision"]
    cfg = parse_config(family_config(build, tmp_path / "o", lm=LMS[lm]), tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg.model, vision)
    assert type(model).__name__ == CLASSES[family]
    assert model.config.text_config.model_type == lm
    check_compatibility(model, vision, 151669)
    set_trainable(model, ["projector"])
    groups = param_groups(model, {"projector": 1.0, "vision_tower": 0.0, "language_model": 0.0}, 0.0)
    assert any(p is model.model.image_newline for g in groups for p in g["params"])
    loader, _ = open_loader([build], [1.0], tokenizer_path=bundled_qwen3_tokenizer(), image_token_id=151655,
                            batch_size=2, max_length=256, num_workers=0, pack_length=220, blank_image=True)
    images = 0
    for batch in loader:  # the model scatters one feature per image token or raises: counts == features
        loss = forward_loss(model, batch, "cpu", torch.float32)
        loss.backward()
        images += 0 if batch.image_sizes is None else batch.image_sizes.shape[0]
    assert images >= 20
    assert model.model.image_newline.grad is not None and model.model.image_newline.grad.abs().sum() > 0


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("family", "lm", "zero"), [("llava_next", "llama", 2), ("llava_onevision", "qwen2", 2),
                                                    ("llava_onevision", "qwen3", 3)])
def test_packed_family_run_trains_and_exports_the_family(fam_builds, family, lm, zero, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from parsit_train.families import family_name_of_config, model_class

    out = tmp_path / "run"
    cfg = family_config(fam_builds[family], out, lm=LMS[lm],
                        data={"builds": [str(fam_builds[family])], "pack_length": 220, "max_images_per_pack": 6},
                        optim={"micro_batch_size": 1, "gradient_accumulation_steps": 1, "max_steps": 3,
                               "schedule": "constant", "lr": {"projector": 1e-2, "vision_tower": 1e-3,
                                                              "language_model": 1e-3}},
                        deepspeed={"zero_stage": zero, "bf16": False},
                        checkpoint={"export_hf": True, "export_projector": True, "every_steps": 3})
    path = write_config(tmp_path / "train.yaml", cfg)
    assert launch(LaunchSpec(config=path, nproc=2, master_port=free_port(), timeout_s=TIMEOUT)) == 0
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(0 < r["supervised_tokens"] < r["tokens"] <= r["padded_tokens"] for r in rows)
    init = load_file(str(out / "init" / "model.safetensors"))
    proj = load_file(str(out / "projector.safetensors"))
    assert proj["image_newline"].shape == init["image_newline"].shape == (32,)
    assert not torch.equal(proj["image_newline"], init["image_newline"])  # trained with the projector part
    hf = AutoConfig.from_pretrained(str(out / "hf"))
    assert family_name_of_config(hf) == family and hf.text_config.model_type == lm
    exported = model_class(family).from_pretrained(str(out / "hf"))
    torch.testing.assert_close(exported.model.image_newline.detach(), proj["image_newline"])


@pytest.mark.timeout(120)
def test_launch_refuses_a_model_of_another_family_or_pinpoints_before_any_rank(fam_builds, tmp_path):
    from parsit_train.config import parse_config
    from parsit_train.model import build_model

    next_vision = json.loads((fam_builds["llava_next"] / "manifest.json").read_text())["vision"]
    cfg = parse_config(family_config(fam_builds["llava_next"], tmp_path / "o"), tmp_path)
    torch.manual_seed(0)
    other = dict(next_vision, grid_pinpoints=[[28, 56], [56, 28]], image_processor=None)
    build_model(cfg.model, other).save_pretrained(str(tmp_path / "pins"))
    build_model(cfg.model).save_pretrained(str(tmp_path / "plain"))  # a plain LLaVA
    for folder, words in (("pins", ["grid pinpoints: build [[28, 28]", "model [[28, 56], [56, 28]]"]),
                          ("plain", ["family: build llava_onevision, model llava"])):
        c = family_config(fam_builds["llava_onevision" if folder == "plain" else "llava_next"], tmp_path / folder / "out")
        c["model"] = {"init_from": str(tmp_path / folder), "vision_feature_layer": -1}
        path = write_config(tmp_path / f"{folder}.yaml", c)
        with pytest.raises(ParsitError) as err:
            launch(LaunchSpec(config=path, nproc=2, master_port=free_port(), timeout_s=TIMEOUT))
        for w in words:
            assert w in str(err.value)
        assert not (tmp_path / folder / "out" / "metrics.jsonl").exists()


@pytest.mark.timeout(600)
def test_a_stopped_onevision_run_resumes_with_the_same_packs_and_losses(fam_builds, tmp_path):
    import shutil

    build = fam_builds["llava_onevision"]
    cfg = family_config(build, tmp_path / "ref", lm=LMS["qwen2"],
                        data={"builds": [str(build)], "pack_length": 220, "max_images_per_pack": 6},
                        optim={"micro_batch_size": 1, "gradient_accumulation_steps": 2, "max_steps": 3,
                               "schedule": "constant", "lr": {"projector": 1e-2, "vision_tower": 1e-3,
                                                              "language_model": 1e-3}},
                        checkpoint={"export_hf": False, "every_steps": 1})
    ref = tmp_path / "ref"
    assert launch(LaunchSpec(config=write_config(tmp_path / "ref.yaml", cfg), nproc=2, master_port=free_port(),
                             timeout_s=TIMEOUT)) == 0
    stopped = tmp_path / "stopped"
    spec = write_config(tmp_path / "stop.yaml", {**cfg, "output_dir": str(stopped)})
    assert launch(LaunchSpec(config=spec, nproc=2, master_port=free_port(), timeout_s=TIMEOUT, stop_after=1)) == 0
    assert [r["step"] for r in read_metrics(stopped)] == [1]
    resumed = tmp_path / "resumed"
    shutil.copytree(stopped, resumed)
    spec = write_config(tmp_path / "resume.yaml", {**cfg, "output_dir": str(resumed)})
    assert launch(LaunchSpec(config=spec, nproc=2, master_port=free_port(), timeout_s=TIMEOUT)) == 0
    want, got = read_metrics(ref), read_metrics(resumed)
    assert [r["step"] for r in got] == [1, 2, 3]
    for a, b in zip(got, want, strict=True):
        assert a["sample_ids"] == b["sample_ids"] and a["tokens"] == b["tokens"], a["step"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6), a["step"]


@pytest.mark.timeout(60)
def test_launch_refuses_an_image_token_id_that_is_not_the_builds_token(fam_builds, tmp_path):
    cfg = family_config(fam_builds["llava_next"], tmp_path / "out")
    cfg["model"]["image_token_id"] = 151646  # not <|image_pad|>, the token the build's processor expands
    with pytest.raises(ParsitError, match=r"'<\|image_pad\|>', id 151655 .*set model.image_token_id: 151655"):
        launch(LaunchSpec(config=write_config(tmp_path / "t.yaml", cfg), nproc=2, master_port=free_port(),
                          timeout_s=TIMEOUT))
