"""The trainer with packing on: stopped mid-epoch and resumed, as it was or with the step split otherwise
(2 ranks x 2 micro-batches of 1 pack -> 2 ranks x 1 micro-batch of 2 packs), it trains on the same packs
with the same losses as an uninterrupted run; metrics carry tokens / padded / supervised.

Another world size: the data position resumes exactly (tests/train/test_packing.py) and the ZeRO-2
checkpoint is loaded through DeepSpeed's universal checkpoint; that is run end to end, 2 -> 1 and 1 -> 2
ranks, in tests/train/test_resume_world_size.py.
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
STEPS, STOP, PACK = 5, 1, 96
TIMEOUT = 240


def _run(cfg: Path, nproc: int, stop_after: int | None = None, overrides: tuple[str, ...] = ()) -> int:
    return launch(LaunchSpec(config=cfg, nproc=nproc, master_port=free_port(), timeout_s=TIMEOUT, stop_after=stop_after,
                             overrides=overrides))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    build = make_build(root / "data", n=12, n_text=6)
    cfg = tiny_config(build, root / "ref", data={"builds": [str(build)], "pack_length": PACK, "max_images_per_pack": 2},
                      optim={"micro_batch_size": 1, "gradient_accumulation_steps": 2, "max_steps": STEPS,
                             "schedule": "constant",
                             "lr": {"projector": 2e-3, "vision_tower": 2e-3, "language_model": 2e-3}},
                      checkpoint={"export_hf": False})
    path = write_config(root / "ref.yaml", cfg)
    assert _run(path, 2) == 0
    return root, cfg, read_metrics(root / "ref")


@pytest.mark.timeout(300)
def test_packed_metrics(setup):
    _root, _cfg, ref = setup
    assert [r["step"] for r in ref] == list(range(1, STEPS + 1))
    for r in ref:
        assert 0 < r["supervised_tokens"] < r["tokens"] <= r["padded_tokens"] <= 4 * (PACK + 4)  # 4 packs (+ blank)
        assert r["tokens"] / r["padded_tokens"] > 0.5
    # an epoch's packs hold every sample once: the first steps' samples do not repeat
    epoch0 = [s for r in ref if r["epoch"] == 0 for s in r["sample_ids"]]
    assert len(epoch0) == len(set(epoch0))


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("micro", "accumulation"), [(1, 2), (2, 1)])
def test_packed_run_resumes_mid_epoch_with_the_same_packs_and_losses(setup, tmp_path, micro, accumulation):
    root, cfg, ref = setup
    out = tmp_path / "out"
    mine = write_config(tmp_path / "train.yaml", {**cfg, "output_dir": str(out)})
    stopped = root / "stopped"
    if not stopped.exists():  # one interrupted 2-rank run serves both resumes
        assert _run(write_config(root / "stop.yaml", {**cfg, "output_dir": str(stopped)}), 2, stop_after=STOP) == 0
    shutil.copytree(stopped, out)
    first = read_metrics(out)
    assert len(first) == STOP and first[-1]["epoch"] == 0  # stopped inside the first epoch
    assert _run(mine, 2, overrides=(f"optim.micro_batch_size={micro}",
                                    f"optim.gradient_accumulation_steps={accumulation}")) == 0
    resumed = read_metrics(out)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(resumed[STOP:], ref[STOP:], strict=True):
        assert sorted(a["sample_ids"]) == sorted(b["sample_ids"]), a["step"]
        assert a["supervised_tokens"] == b["supervised_tokens"] and a["tokens"] == b["tokens"]
        # token-exact: the same step loss however the step's packs are split into micro-batches
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6 if micro == 1 else 1e-5), a["step"]
        if micro == 1:
            assert a["sample_ids"] == b["sample_ids"]
