"""A packed ZeRO-2 run resumed with another number of ranks (2 -> 1 and 1 -> 2, real gloo ranks) continues
with its optimizer state: DeepSpeed's partitioned checkpoint is converted to its universal form on resume
(parsit_train.checkpoint.load_resharded). The resumed steps train on exactly the packs not yet seen and
their losses equal an uninterrupted 2-rank run's.

The global step is kept: 2 ranks x 2 micro-batches of 1 pack <-> 1 rank x 4 micro-batches of 1 pack. With
token-exact loss normalisation a step's loss and gradient do not depend on how its packs are split over
ranks, so the runs differ only by float32 summation order (gloo's reduction vs one rank's accumulation),
a few ulps per step compounded over the steps after the checkpoint (measured: 0 and 2.9e-8 relative),
so 1e-5 relative leaves ~300x room. The first resumed step's loss depends on the weights only (measured
equal bit for bit); the next one also on Adam's moments and step count, restored from the conversion.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_build, tiny_config, write_config  # noqa: E402
from train_helpers import free_port, read_metrics  # noqa: E402

from parsit_train.launch import LaunchSpec, launch  # noqa: E402

pytestmark = pytest.mark.slow
STEPS, STOP, PACK = 3, 1, 96
TIMEOUT = 240
ACCUMULATION = {2: 2, 1: 4}  # the same 4 packs per optimizer step at either world size


def _run(cfg: Path, nproc: int, stop_after: int | None = None) -> int:
    return launch(LaunchSpec(config=cfg, nproc=nproc, master_port=free_port(), timeout_s=TIMEOUT, stop_after=stop_after,
                             overrides=(f"optim.gradient_accumulation_steps={ACCUMULATION[nproc]}",)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reshard")
    build = make_build(root / "data", n=12, n_text=6)
    cfg = tiny_config(build, root / "ref", data={"builds": [str(build)], "pack_length": PACK, "max_images_per_pack": 2},
                      optim={"micro_batch_size": 1, "gradient_accumulation_steps": 2, "max_steps": STEPS,
                             "schedule": "constant",
                             "lr": {"projector": 2e-3, "vision_tower": 2e-3, "language_model": 2e-3}},
                      checkpoint={"export_hf": False, "every_steps": 1, "keep_last": STEPS})
    assert _run(write_config(root / "ref.yaml", cfg), 2) == 0
    return root, cfg, read_metrics(root / "ref")


@pytest.mark.timeout(400)
@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_resume_with_another_world_size_keeps_data_and_optimizer(setup, tmp_path, before, after):
    root, cfg, ref = setup
    out = tmp_path / "out"
    if before == 2:  # the reference run, cut back to its checkpoint at STOP (as if it had died after it)
        shutil.copytree(root / "ref", out)
        for later in range(STOP + 1, STEPS + 1):
            shutil.rmtree(out / "checkpoints" / f"step-{later:08d}")
    else:
        assert _run(write_config(tmp_path / "stop.yaml", {**cfg, "output_dir": str(out)}), before, stop_after=STOP) == 0
    assert len(read_metrics(out)) == (STEPS if before == 2 else STOP)
    assert _run(write_config(tmp_path / "resume.yaml", {**cfg, "output_dir": str(out)}), after) == 0
    resumed = read_metrics(out)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert (out / "checkpoints" / f"step-{STOP:08d}" / "universal" / "zero").is_dir()  # converted, not warm-started
    for a, b in zip(resumed, ref, strict=True):
        assert sorted(a["sample_ids"]) == sorted(b["sample_ids"]), a["step"]
        assert a["epoch"] == b["epoch"] and a["tokens"] == b["tokens"]
        assert a["supervised_tokens"] == b["supervised_tokens"]
        print(f"step {a['step']}: loss {a['loss']!r} vs {b['loss']!r}, rel {abs(a['loss'] - b['loss']) / b['loss']:.1e}")
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]
    # the first epoch (the checkpoint is inside it) holds every sample exactly once: none skipped, none twice
    epoch0 = [s for r in resumed if r["epoch"] == 0 for s in r["sample_ids"]]
    assert resumed[STOP]["epoch"] == 0 and len(epoch0) == len(set(epoch0))
    assert set(epoch0) == {s for r in ref for s in r["sample_ids"]}
