"""Trainer start-up checks and small correctness faults (issue 25: 4, 5, 6).

- ``optim.max_steps`` with fewer rows or packs than one global batch is refused at start with the numbers
  (it used to spin forever at 100% CPU: every epoch yielded nothing under drop_last);
- ``model.vision_feature_layer`` with ``model.init_from`` is applied, not silently replaced by the folder's;
- a resume at another world size gives every rank its own deterministic RNG streams from (seed, rank, step).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_build, tiny_config, write_config  # noqa: E402
from train_helpers import free_port  # noqa: E402

from parsit_data.errors import ParsitError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    return make_build(tmp_path_factory.mktemp("small"), n=3)


# --- fault 4: fewer units than one global batch ------------------------------------------------------
@pytest.mark.timeout(TIMEOUT + 30)
def test_max_steps_with_fewer_packs_than_a_global_batch_is_refused_at_start(small_build, tmp_path):
    """3 samples fit in 1 pack; 2 packs per micro-batch: one line with the numbers, exit code 2, no hang."""
    cfg = tiny_config(small_build, tmp_path / "out", data={"builds": [str(small_build)], "pack_length": 256},
                      optim={"micro_batch_size": 2, "max_steps": 3})
    path = write_config(tmp_path / "train.yaml", cfg)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PARSIT_TEST_FAIL_AT")}
    env.update(PYTHONPATH=str(ROOT), MASTER_PORT=str(free_port()))
    res = subprocess.run([sys.executable, "-m", "parsit_train.cli.main", "train", "--config", str(path)],
                         capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert res.returncode == 2, res.stderr[-3000:]
    line = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "has 1 packs of pack_length=256, fewer than one global batch of 2" in line[0]
    assert "micro_batch_size 2 x 1 rank(s)" in line[0]


def test_fewer_rows_than_a_global_batch_names_rows_ranks_and_batch():
    from parsit_train.data import ResumableBatchSampler
    from parsit_train.train import check_epoch_fills_a_batch

    for rank in (0, 2):
        sampler = ResumableBatchSampler([5], batch_size=2, seed=0, rank=rank, world_size=3)
        with pytest.raises(ParsitError, match=r"epoch 0 has 5 rows \(after build weights\), fewer than one global "
                                              r"batch of 6 \(micro_batch_size 2 x 3 rank\(s\)\)"):
            check_epoch_fills_a_batch(sampler)
    check_epoch_fills_a_batch(ResumableBatchSampler([6], batch_size=2, seed=0, rank=0, world_size=3))


# --- fault 5: vision_feature_layer with init_from ------------------------------------------------------
@pytest.fixture(scope="module")
def folder_at_last_layer(tmp_path_factory) -> Path:
    """A saved tiny LLaVA folder whose config feeds the projector the vision tower's LAST hidden state (-1)."""
    from parsit_train.config import parse_config
    from parsit_train.model import build_model

    cfg = parse_config(tiny_config(Path("/b"), Path("/o")), Path("/"))
    assert cfg.model.vision_feature_layer == -1
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("llava") / "model"
    build_model(cfg.model).save_pretrained(str(folder))
    return folder


def _features(model, pixels):
    """What the projector is fed, and every hidden state of the vision tower, for ``pixels``."""
    with torch.no_grad():
        fed = model.model.get_image_features(pixel_values=pixels).pooler_output[0]
        states = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        return fed, [model.model.multi_modal_projector(h)[0] for h in states]


@pytest.mark.parametrize(("wanted", "used"), [(None, -1), (-2, -2), (-1, -1), (1, 1)])
def test_vision_feature_layer_is_applied_over_an_init_from_folder(folder_at_last_layer, wanted, used):
    from parsit_train.config import ModelConfig
    from parsit_train.model import load_model

    model, _ = load_model(folder_at_last_layer, ModelConfig(init_from=folder_at_last_layer,
                                                            vision_feature_layer=wanted), torch.float32)
    assert model.config.vision_feature_layer == used and model.model.config.vision_feature_layer == used
    fed, by_layer = _features(model.eval(), torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(fed, by_layer[used], rtol=0, atol=0)
    assert not torch.allclose(by_layer[-1], by_layer[-2])  # the layers differ: the check can tell them apart


def test_a_loaded_model_keeps_its_own_layers_not_hub_kernels(folder_at_last_layer):
    """transformers 5.x kernelizes a loaded model by default (Hub kernels fetched at load time; on an offline
    H200 under ZeRO-3 that failed the load): Parsit's load_model turns it off."""
    from transformers import AutoModelForImageTextToText

    from parsit_train.config import ModelConfig
    from parsit_train.model import load_model

    default = AutoModelForImageTextToText.from_pretrained(str(folder_at_last_layer))
    assert default.use_kernels  # what transformers does on its own (so the check below can fail)
    model, _ = load_model(folder_at_last_layer, ModelConfig(init_from=folder_at_last_layer), torch.float32)
    assert model.use_kernels is False


def test_a_vision_feature_layer_the_tower_lacks_is_refused(folder_at_last_layer):
    from parsit_train.config import ModelConfig
    from parsit_train.model import load_model

    for bad in (3, -4, 0):
        with pytest.raises(ParsitError, match=rf"vision_feature_layer {bad} is not a usable hidden state .* \(3 of "
                                              r"them: -3 \.\. -1 or 1 \.\. 2\)"):
            load_model(folder_at_last_layer, ModelConfig(init_from=folder_at_last_layer, vision_feature_layer=bad),
                       torch.float32)


# --- fault 6: RNG streams after a resume at another world size ------------------------------------------
STEP = 3


PRE_SEEDS = (7, 1234)


def _resume_rank(rank: int, world: int, root: str, port: int) -> None:
    """One gloo rank, twice: the trainer's pre-resume seeding (another seed each time), then ``resume`` of a
    1-rank checkpoint (DeepSpeed's own load stubbed: the weights are not what is checked here), then three
    draws of each stream."""
    import json as _json
    from datetime import timedelta

    from parsit_train import checkpoint
    from parsit_train.config import parse_config
    from parsit_train.data import ResumableBatchSampler
    from parsit_train.train import seed_everything

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        cfg = parse_config(tiny_config(Path(root), Path(root) / "out", seed=7), Path(root))
        checkpoint.load_resharded = lambda *args, **kw: "loaded"
        runs = []
        for pre_seed in PRE_SEEDS:
            seed_everything(pre_seed)  # what train() does before resume: the same stream on every rank
            sampler = ResumableBatchSampler([16], batch_size=1, seed=7, rank=rank, world_size=world)
            step, run_id = checkpoint.resume(None, cfg, sampler, rank, Path(root) / "out" / "metrics.jsonl")
            assert run_id == "run-a"  # a resume continues the checkpoint's run
            runs.append({"step": step, "consumed": sampler.consumed, "python": [random.random() for _ in range(3)],
                         "numpy": np.random.rand(3).tolist(), "torch": torch.rand(3).tolist()})
        Path(root, f"draws-{rank}.json").write_text(_json.dumps(runs))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.timeout(120)
def test_a_resume_at_another_world_size_gives_ranks_distinct_deterministic_streams(tmp_path):
    """A 1-rank checkpoint resumed by 2 ranks: each rank's Python/NumPy/torch streams differ from the
    other's and depend on (seed, rank, step) only (not on the state before resume)."""
    import json as _json

    import torch.multiprocessing as mp

    from parsit_train.checkpoint import RANK_STATE, rng_state
    from parsit_train.checkpoint_files import tag, write_complete_marker
    from parsit_train.data import ResumableBatchSampler

    path = tmp_path / "out" / "checkpoints" / tag(STEP)
    path.mkdir(parents=True)
    saved = ResumableBatchSampler([16], batch_size=2, seed=7)
    saved.advance(STEP)
    torch.save({"step": STEP, "world_size": 1, "sampler": saved.state_dict(), "rng": rng_state()},
               path / RANK_STATE.format(rank=0))
    write_complete_marker(path, STEP, 1, "run-a")
    mp.spawn(_resume_rank, args=(2, str(tmp_path), free_port()), nprocs=2, join=True)
    ranks = [_json.loads((tmp_path / f"draws-{r}.json").read_text()) for r in (0, 1)]
    for first, second in ranks:
        assert first["step"] == second["step"] == STEP and first["consumed"] == second["consumed"] == 2 * STEP
        assert first == second  # from (seed, rank, step), whatever the streams were before resume
    for stream in ("python", "numpy", "torch"):
        assert ranks[0][0][stream] != ranks[1][0][stream], stream  # the ranks' streams differ
