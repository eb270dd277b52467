"""Trainer start-up checks and small correctness faults (issue 25: 4, 5, 6).

- ``optim.max_steps`` with fewer rows or packs than one global batch is refused at start with the numbers
  (it used to spin forever at 100% CPU: every epoch yielded nothing under drop_last);
- ``model.vision_feature_layer`` with ``model.init_from`` is applied, not silently replaced by the folder's;
- a resume at another world size gives every rank its own deterministic RNG streams from (seed, rank, step).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_build, tiny_config, write_config  # noqa: E402

from parsit_data.errors import ParsitError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    env.update(PYTHONPATH=str(ROOT), MASTER_PORT=str(_port()))
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
