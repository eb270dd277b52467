"""The Ray Train path of ``parsit-train launch --ray-address``: one TorchTrainer worker on an embedded Ray.

Light by design (one worker, two steps): it checks that Ray's process group, the rank environment and
DeepSpeed fit together and that the run writes its metrics and checkpoint. Multi-node Ray is not tested.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_build, tiny_config, write_config  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_ray_train_runs_the_same_loop(tmp_path):
    import ray
    from parsit_train.launch import LaunchSpec, launch_ray

    build = make_build(tmp_path / "data", n=8)
    cfg = write_config(tmp_path / "train.yaml", tiny_config(build, tmp_path / "out", optim={"max_steps": 2}))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        metrics = launch_ray(LaunchSpec(config=cfg, nproc=1), address=None)
    finally:
        ray.shutdown()
    assert metrics["output_dir"] == str(tmp_path / "out")
    recs = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]
    assert (tmp_path / "out" / "checkpoints" / "latest").read_text().strip() == "step-00000002"
