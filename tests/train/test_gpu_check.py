"""scripts/gpu_check.sh --dry-run: its CPU-independent part (arguments, case configs validated by the
trainer's config model, parameter counts of the realistic shape) runs without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(150)
def test_gpu_check_dry_run_writes_valid_case_configs(tmp_path):
    env = {**os.environ, "PYTHON": str(REPO / ".venv" / "bin" / "python"), "DS_ACCELERATOR": "cpu"}
    if not Path(env["PYTHON"]).exists():
        env.pop("PYTHON")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "dry run: nothing executed" in proc.stdout
    realistic = next(line for line in proc.stdout.splitlines() if "model realistic" in line)
    assert 1900 < float(realistic.split(":")[1].split("M")[0].replace(",", "")) < 2400  # 1.7B LM + 0.4B tower
    cases = sorted(p.parent.name for p in tmp_path.glob("*/config.json"))
    assert cases == ["realistic-z2-sdpa", "realistic-z3-sdpa", "tiny-z2-sdpa", "tiny-z3-sdpa"] or \
        len(cases) == 8  # flash_attention_2 cases too where flash_attn is installed
    cfg = json.loads((tmp_path / "realistic-z3-sdpa" / "config.json").read_text())
    assert cfg["deepspeed"] == {"zero_stage": 3, "bf16": True} and cfg["model"]["attn_implementation"] == "sdpa"


@pytest.mark.timeout(120)
def test_pack_check_tells_the_old_flash_path_from_the_fixed_one_on_cpu(builds, tmp_path, monkeypatch):
    """The gpu_check's packed-attention step, run here with the flash kernels replaced by exact torch
    stand-ins (tests/train/flash_standins.py) and float32: the trainer's path keeps a pack's samples
    isolated (2 packs or 1, sdpa or flash), the path before the fix (flash over [2, T] rows) does not."""
    import sys

    import flash_standins
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check
    from pack_isolation import format_rows
    from train_helpers import tiny_config

    from parsit_train.config import parse_config
    from parsit_train.model import build_model

    flash_standins.install(monkeypatch)
    torch.manual_seed(0)
    build_model(parse_config(tiny_config(Path("/b"), Path("/o")), Path("/")).model).save_pretrained(
        str(tmp_path / "init-tiny"))
    path = tmp_path / "pack_config.json"
    path.write_text(json.dumps(gpu_check.pack_config(tmp_path, builds["a"], 160)))
    gpu_check.run_pack_check(path, tmp_path / "result.json", ["sdpa", "flash_attention_2"])
    rows = {(r["attention"], r["feed"]): r for r in json.loads((tmp_path / "result.json").read_text())}
    assert sorted(rows) == [("flash_attention_2", "1 pack"), ("flash_attention_2", "2 packs"),
                            ("flash_attention_2", "2 packs, rows kept (old path)"), ("sdpa", "1 pack"),
                            ("sdpa", "2 packs")]
    for key, row in rows.items():
        assert row["supervised"] > 0 and row["alone"] > 0
        if "old path" in key[1]:  # the leak the fix removed
            assert row["rel_diff"] > 1e-4 and row["max_logit_diff"] > 1e-2 * row["logit_scale"], row
        else:
            assert row["rel_diff"] < 1e-5 and row["max_logit_diff"] < 1e-5 * row["logit_scale"], row
    table = format_rows(list(rows.values()), 1e-5)
    assert table.count("isolated") == 4 and "leaks (expected)" in table
