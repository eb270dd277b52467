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
