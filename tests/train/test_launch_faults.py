"""The trainer fails once, clearly: real ``parsit-train launch`` runs of 2 DeepSpeed ranks on CPU/gloo.

- a corrupt shard is refused by launch itself, before any rank starts: one ``error:`` line, exit code 2;
- a rank SIGKILLed while writing a checkpoint: the other rank is stopped within seconds, one message
  names the dead rank, exit code 1; the same command again resumes from the previous complete
  checkpoint (the half-written one is skipped, and the log says so) and reproduces the losses and
  sample ids of an uninterrupted run step for step;
- a rank that raises: its own traceback is printed once, without torchrun's ChildFailedError;
- ranks started by launch do not hash the shards again; started without launch's check, local rank 0
  hashes and every rank refuses when it found a corrupt shard.

Failures are injected with the PARSIT_TEST_FAIL_AT test hook (parsit_train.faults). Every process start
has a timeout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_build, tiny_config, write_config  # noqa: E402

from parsit_data.errors import ParsitError  # noqa: E402
from parsit_train.checkpoint_files import (  # noqa: E402
    COMPLETE_MARKER,
    checkpoint_problem,
    find_resumable,
    latest_checkpoint,
    write_complete_marker,
)
from parsit_train.launch import LaunchSpec, RankFailed, launch  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
STEPS, EVERY = 8, 3
CLI_TIMEOUT = 240


def _cli(*args: str, fail_at: str | None = None) -> subprocess.CompletedProcess:
    """The real console script, in a subprocess (this tree's code first on the path)."""
    env = {k: v for k, v in os.environ.items() if k != "PARSIT_TEST_FAIL_AT"}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if fail_at:
        env["PARSIT_TEST_FAIL_AT"] = fail_at
    script = Path(sys.executable).with_name("parsit-train")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "parsit_train.cli.main"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=CLI_TIMEOUT, env=env)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _config(build: Path, root: Path, **over) -> Path:
    cfg = tiny_config(
        build, root / "out",
        optim={"lr": {"projector": 5e-3, "vision_tower": 5e-3, "language_model": 5e-3}, "micro_batch_size": 2,
               "max_steps": STEPS, "schedule": "cosine", "warmup_steps": 2},
        checkpoint={"every_steps": EVERY, "keep_last": 2, "export_hf": False},
        **over,
    )
    return write_config(root / "train.yaml", cfg)


def _flip_byte(build: Path) -> Path:
    shard = sorted((build / "shards").glob("*.arrow"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 can tell
    shard.write_bytes(bytes(data))
    return shard


def _run_processes(marker: str) -> list[str]:
    """Pids of live processes whose command line names ``marker`` (this test's config path)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != str(os.getpid()):
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    found.append(proc.name)
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    return make_build(tmp_path_factory.mktemp("data"), n=12, n_text=4)


@pytest.fixture
def corrupt_build(build_dir, tmp_path) -> tuple[Path, Path]:
    dst = tmp_path / "corrupt"
    shutil.copytree(build_dir, dst)
    return dst, _flip_byte(dst)


@pytest.fixture(scope="module")
def reference(build_dir, tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run of STEPS steps (checkpoints at 3, 6, 8)."""
    root = tmp_path_factory.mktemp("reference")
    assert launch(LaunchSpec(config=_config(build_dir, root), nproc=2, timeout_s=CLI_TIMEOUT)) == 0
    return root / "out"


@pytest.mark.timeout(120)
def test_corrupt_shard_is_one_error_line_before_any_rank(corrupt_build, tmp_path):
    build, shard = corrupt_build
    cfg = _config(build, tmp_path)
    res = _cli("launch", "--config", str(cfg), "--nproc", "2")
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: shard ") and shard.name in lines[0] and "corrupt" in lines[0]
    assert not (tmp_path / "out").exists()  # rank 0 creates it first thing: no rank started


@pytest.mark.timeout(120)
def test_verify_size_trusts_sizes_full_hashes(corrupt_build, tmp_path):
    from parsit_train.config import load_config
    from parsit_train.preflight import STAMP_NAME, verify_before_launch

    build, shard = corrupt_build
    cfg = load_config(_config(build, tmp_path))
    with pytest.raises(ParsitError, match=f"{shard.name}.*corrupt"):
        verify_before_launch(cfg, tmp_path)
    cfg.data.verify = "size"
    verify_before_launch(cfg, tmp_path)  # a flipped byte keeps the size: size mode cannot see it (documented)
    assert not (tmp_path / STAMP_NAME).exists()  # nothing was hashed, so nothing is vouched for
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ParsitError, match=f"{shard.name}.*bytes, the manifest says"):
        verify_before_launch(cfg, tmp_path)


@pytest.mark.timeout(300)
def test_rank_killed_in_checkpoint_then_resume_matches(reference, build_dir, tmp_path):
    cfg = _config(build_dir, tmp_path)
    out = tmp_path / "out"
    res = _cli("launch", "--config", str(cfg), "--nproc", "2", fail_at=f"1:{2 * EVERY}:kill-in-checkpoint")
    ended = time.time()
    assert res.returncode == 1, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: " + errors[0].removeprefix("error: ")] and len(errors) == 1, res.stderr
    assert "rank 1 (pid" in errors[0] and "SIGKILL" in errors[0]
    assert "resume from" in res.stderr and "step-00000003" in res.stderr
    for noise in ("ChildFailedError", "Traceback", "torch/distributed/elastic", "Sending process"):
        assert noise not in res.stderr, noise
    # The other rank was stopped within seconds of the kill (it came right after DeepSpeed's files).
    half = out / "checkpoints" / f"step-{2 * EVERY:08d}"
    killed_at = max(f.stat().st_mtime for f in half.iterdir())
    assert ended - killed_at < 20, ended - killed_at
    assert not _run_processes(str(cfg))
    assert not (half / COMPLETE_MARKER).exists()
    assert (out / "checkpoints" / "latest").read_text() == f"step-{EVERY:08d}"

    res = _cli("launch", "--config", str(cfg), "--nproc", "2")  # the same command again
    assert res.returncode == 0, res.stderr
    assert f"step-{2 * EVERY:08d} is not usable (no {COMPLETE_MARKER}" in res.stderr
    assert f"resuming from step-{EVERY:08d}" in res.stderr
    resumed, ref = _metrics(out), _metrics(reference)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(resumed, ref, strict=True):
        assert a["sample_ids"] == b["sample_ids"], a["step"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-6), a["step"]
        assert a["lr"] == pytest.approx(b["lr"])
    assert latest_checkpoint(out / "checkpoints").name == f"step-{STEPS:08d}"


@pytest.mark.timeout(240)
def test_raising_rank_prints_its_own_error_once(build_dir, tmp_path):
    cfg = _config(build_dir, tmp_path)
    t0 = time.time()
    res = _cli("launch", "--config", str(cfg), "--nproc", "2", "--set", "checkpoint.every_steps=null",
               fail_at="0:2:raise")
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("error:") == 1 and "error: rank 0 failed:" in res.stderr
    assert res.stderr.count("injected failure on rank 0 after step 2") == 1
    assert res.stderr.count("Traceback") == 1  # rank 0's own; rank 1 was stopped, not reported
    assert "ChildFailedError" not in res.stderr and "torch/distributed/elastic" not in res.stderr
    assert "no complete checkpoint yet" in res.stderr
    assert [r["step"] for r in _metrics(tmp_path / "out")] == [1, 2]
    assert time.time() - t0 < 200
    # Verified once: launch hashed the shards, the ranks trusted its stamp.
    assert "data checked in" in res.stderr and "(shards hashed)" in res.stderr
    for rank in (0, 1):
        assert re.search(rf"rank {rank}: data ready in [0-9.]+s \(shards hashed once by launch", res.stderr)


@pytest.mark.timeout(240)
def test_without_launch_check_local_rank0_hashes_and_all_refuse(corrupt_build, tmp_path):
    build, shard = corrupt_build
    spec = LaunchSpec(config=_config(build, tmp_path), nproc=2, timeout_s=CLI_TIMEOUT, verify=False)
    with pytest.raises(RankFailed) as err:
        launch(spec)
    msg = str(err.value)
    assert msg.startswith("rank 0 failed: shard ") and shard.name in msg and "corrupt" in msg
    assert "Traceback" not in msg


def _fake_checkpoint(path: Path, step: int) -> None:
    path.mkdir(parents=True)
    for name, size in (("mp_rank_00_model_states.pt", 300), ("parsit_rank0.pt", 40), ("parsit_rank1.pt", 40)):
        (path / name).write_bytes(b"x" * size)
    write_complete_marker(path, step, world_size=2, run_id="run-a")


def test_incomplete_newest_checkpoint_is_skipped(tmp_path):
    ckpts = tmp_path / "checkpoints"
    _fake_checkpoint(ckpts / "step-00000003", 3)
    _fake_checkpoint(ckpts / "step-00000006", 6)
    assert find_resumable(ckpts) == (ckpts / "step-00000006", [])
    newest = ckpts / "step-00000006"
    (newest / "parsit_rank1.pt").write_bytes(b"x" * 7)  # truncated after the marker was written
    path, skipped = find_resumable(ckpts)
    assert path == ckpts / "step-00000003"
    assert skipped[0][0] == newest and "parsit_rank1.pt has 7 bytes" in skipped[0][1]
    (newest / "parsit_rank1.pt").unlink()
    assert "parsit_rank1.pt is missing" in checkpoint_problem(newest)
    (newest / COMPLETE_MARKER).unlink()
    assert "being written when the run stopped" in checkpoint_problem(newest)
    (ckpts / "step-00000009").mkdir()  # a folder the crash left empty
    path, skipped = find_resumable(ckpts)
    assert path == ckpts / "step-00000003" and [p.name for p, _ in skipped] == ["step-00000009", "step-00000006"]
    shutil.rmtree(ckpts / "step-00000003")
    assert latest_checkpoint(ckpts) is None
