"""ZeRO-3 construction with 2 gloo ranks: the merged folder is created partitioned, each rank holding about
half of the parameters' elements right after ``from_pretrained`` (no rank materialises the model)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import TINY_LM, TINY_VISION  # noqa: E402

WORKER = Path(__file__).parent / "zero3_worker.py"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(150)
def test_zero3_creates_the_model_partitioned_across_two_ranks(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from parsit_train.assemble import assemble

    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(**TINY_VISION)).to(torch.bfloat16).save_pretrained(tmp_path / "vit")
    Qwen3ForCausalLM(Qwen3Config(**TINY_LM)).to(torch.bfloat16).save_pretrained(tmp_path / "lm")
    folder = assemble(tmp_path / "vit", tmp_path / "lm", tmp_path / "merged", vision_feature_layer=-1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu",
               "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(folder), str(tmp_path / f"r{rank}.json")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(x[-3000:] for x in logs)
    ranks = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    full = ranks[0]["full"]
    assert full > 151680 * 32 * 2  # embeddings + lm_head: the real parameter count
    for r in ranks:
        assert r["partitioned"] and r["materialised"] == 0  # nothing whole on any rank
        assert r["full"] == full and r["report_total"] == full  # the report counts full sizes
        assert abs(r["local"] - full / 2) <= 0.01 * full, r  # each rank holds about half
        assert r["dtypes"] == ["torch.bfloat16"]
    assert sum(r["local"] for r in ranks) >= full
