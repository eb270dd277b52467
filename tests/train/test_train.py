"""End to end: real builder shards -> 2 DeepSpeed ranks on CPU/gloo (ZeRO 2 and 3) -> checkpoints, exact resume.

One uninterrupted ZeRO-2 run (module fixture) serves two tests: the loss falls over a few dozen steps,
and a run stopped half way and resumed reproduces its second half step for step (losses and sample ids).
Every process start has a timeout; launch() kills the whole process group when it is exceeded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_build, tiny_config, write_config  # noqa: E402
from train_helpers import free_port, read_metrics  # noqa: E402

from parsit_data.errors import ParsitError  # noqa: E402
from parsit_train.launch import LaunchSpec, launch  # noqa: E402

pytestmark = pytest.mark.slow
STEPS = 16
LAUNCH_TIMEOUT = 240


def _run(cfg_path: Path, nproc: int = 2, stop_after: int | None = None) -> int:
    spec = LaunchSpec(config=cfg_path, nproc=nproc, master_port=free_port(), timeout_s=LAUNCH_TIMEOUT, stop_after=stop_after)
    return launch(spec)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    return make_build(tmp_path_factory.mktemp("data"), n=12, n_text=4)


def _zero2_config(build: Path, out: Path) -> dict:
    return tiny_config(
        build, out,
        optim={"lr": {"projector": 5e-3, "vision_tower": 5e-3, "language_model": 5e-3}, "micro_batch_size": 2,
               "max_steps": STEPS, "schedule": "cosine", "warmup_steps": 2},
        deepspeed={"zero_stage": 2, "bf16": False},
        checkpoint={"every_steps": STEPS // 2, "export_hf": False},
    )


@pytest.fixture(scope="module")
def full_run(build_dir, tmp_path_factory) -> Path:
    """An uninterrupted 2-rank ZeRO-2 run of STEPS optimizer steps."""
    root = tmp_path_factory.mktemp("full")
    cfg = write_config(root / "train.yaml", _zero2_config(build_dir, root / "out"))
    assert _run(cfg) == 0
    return root / "out"


@pytest.mark.timeout(300)
def test_zero2_two_ranks_loss_falls(full_run):
    recs = read_metrics(full_run)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    losses = [r["loss"] for r in recs]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, losses
    # 2 ranks x micro-batch 2 = 4 samples a step; within an epoch (16 rows = 4 steps) no sample repeats.
    assert all(len(r["sample_ids"]) == 4 for r in recs)
    epoch0 = [s for r in recs[:4] for s in r["sample_ids"]]
    assert len(set(epoch0)) == 16
    # Some rank's micro-batch was text only while the other rank had images: the vision path still ran
    # on every rank (otherwise ZeRO would hang or miss gradients).
    halves = [(r["sample_ids"][:2], r["sample_ids"][2:]) for r in recs]
    assert any(all(s.startswith("txt-") for s in a) != all(s.startswith("txt-") for s in b) for a, b in halves)
    assert all(r["lr"].keys() == {"projector", "vision_tower", "language_model"} for r in recs)
    assert all(r["tokens_per_s"] > 0 and r["supervised_tokens_per_s"] > 0 for r in recs)
    ckpts = full_run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == f"step-{STEPS:08d}"
    assert (ckpts / f"step-{STEPS:08d}" / "parsit_rank1.pt").is_file()


@pytest.mark.timeout(400)
def test_resume_continues_exactly(full_run, build_dir, tmp_path):
    cfg = write_config(tmp_path / "train.yaml", _zero2_config(build_dir, tmp_path / "out"))
    assert _run(cfg, stop_after=STEPS // 2) == 0
    out = tmp_path / "out"
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{STEPS // 2:08d}"
    assert len(read_metrics(out)) == STEPS // 2
    assert _run(cfg) == 0  # resumes from `latest`
    resumed, reference = read_metrics(out), read_metrics(full_run)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(resumed[STEPS // 2 :], reference[STEPS // 2 :], strict=True):
        assert a["sample_ids"] == b["sample_ids"], a["step"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-6), a["step"]
        assert a["lr"] == pytest.approx(b["lr"])


@pytest.mark.timeout(300)
def test_zero3_two_ranks_bf16_trains_and_exports(build_dir, tmp_path):
    import torch
    from transformers import LlavaForConditionalGeneration

    from train_support import open_loader

    cfg = tiny_config(
        build_dir, tmp_path / "out",
        optim={"lr": {"projector": 3e-3, "vision_tower": 3e-3, "language_model": 3e-3}, "micro_batch_size": 2,
               "max_steps": 3, "schedule": "constant"},
        deepspeed={"zero_stage": 3, "bf16": True},
        checkpoint={"export_hf": True},
    )
    assert _run(write_config(tmp_path / "train.yaml", cfg)) == 0
    recs = read_metrics(tmp_path / "out")
    losses = [r["loss"] for r in recs]
    assert len(losses) == 3 and losses[-1] < losses[0]
    # One rank had a text-only micro-batch while the other had images (ZeRO-3 gathers must still pair up).
    assert any(all(s.startswith("txt-") for s in r["sample_ids"][2:]) != all(s.startswith("txt-") for s in r["sample_ids"][:2])
               for r in recs)
    # The export gathers the ZeRO-3 partitions: it loads and computes the loss the run logged.
    model = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "out" / "hf"), dtype=torch.float32)
    assert model.config.image_token_id == 151655
    assert model.model.multi_modal_projector.linear_1.weight.abs().sum() > 0
    loader, _ = open_loader([build_dir], tokenizer_path="qwen3", image_token_id=151655, batch_size=2,
                            max_length=256, num_workers=0)
    batch = next(iter(loader))
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels,
                    pixel_values=batch.pixel_values)
    assert torch.isfinite(out.loss) and out.loss.item() < losses[0]


@pytest.mark.timeout(120)
def test_launch_timeout_stops_the_workers(build_dir, tmp_path):
    cfg = write_config(tmp_path / "train.yaml", tiny_config(build_dir, tmp_path / "out"))
    spec = LaunchSpec(config=cfg, nproc=2, master_port=free_port(), timeout_s=3)
    with pytest.raises(ParsitError, match="did not finish within"):
        launch(spec)


def test_launch_refuses_a_bad_config_before_starting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: out\ndata: {builds: []}\nmodel: {}\noptim: {max_step: 3}\n")
    with pytest.raises(ParsitError) as err:
        launch(LaunchSpec(config=bad, nproc=2, timeout_s=10))
    msg = str(err.value)
    assert "data.builds" in msg and "optim.max_step" in msg and "model" in msg
