"""Whose checkpoints: a new run (``checkpoint.resume: false``) never prunes, overwrites or hands over to
another run's checkpoints (parsit_train.checkpoint_files: run ids in the completion marker, claim, prune),
and checkpoint files are fsync'ed before their completion marker.

The unit tests use hand-made checkpoint folders (no ranks); the last one runs the real trainer (1 gloo
rank, tiny model): run A, then run B with resume: false is refused before any rank starts, then with
move_aside it keeps A's checkpoints and metrics in ``aside-<time>/``, and a default start would resume B.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_build, tiny_config, write_config  # noqa: E402
from train_helpers import free_port  # noqa: E402

from parsit_data.errors import ParsitError  # noqa: E402
from parsit_train.checkpoint_files import (  # noqa: E402
    COMPLETE_MARKER,
    LEGACY_RUN,
    checkpoint_run_id,
    claim,
    find_resumable,
    prune,
    write_complete_marker,
)


def _fake(ckpts: Path, step: int, run_id: str | None, complete: bool = True) -> Path:
    path = ckpts / f"step-{step:08d}"
    path.mkdir(parents=True)
    (path / "mp_rank_00_model_states.pt").write_bytes(b"x" * 100)
    (path / "global_step").mkdir()
    (path / "global_step" / "zero_pp_rank_0_optim_states.pt").write_bytes(b"y" * 50)
    if complete:
        write_complete_marker(path, step, world_size=1, run_id=run_id or "tmp")
        if run_id is None:  # a marker of a Parsit from before run ids
            marker = json.loads((path / COMPLETE_MARKER).read_text())
            del marker["run_id"]
            (path / COMPLETE_MARKER).write_text(json.dumps(marker))
    return path


def _names(ckpts: Path) -> list[str]:
    return sorted(p.name for p in ckpts.glob("step-*"))


def test_prune_keeps_this_runs_newest_and_never_another_runs(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        _fake(ckpts, step, "run-a")
    _fake(ckpts, 4, "run-b")  # another run's, newer (a hand-made mix: claim never lets a new run start here)
    _fake(ckpts, 5, None, complete=False)  # a folder a crash left: never loadable
    prune(ckpts, 1, "run-a")
    assert _names(ckpts) == ["step-00000003", "step-00000004"]
    assert checkpoint_run_id(ckpts / "step-00000004") == "run-b"
    assert find_resumable(ckpts, "run-a")[0] == ckpts / "step-00000003"


def test_new_run_refuses_another_runs_checkpoints_or_moves_them_aside(tmp_path):
    ckpts, metrics = tmp_path / "checkpoints", tmp_path / "metrics.jsonl"
    _fake(ckpts, 2, "run-a")
    _fake(ckpts, 4, "run-a")
    metrics.write_text('{"step": 1}\n')
    with pytest.raises(ParsitError) as err:
        claim(ckpts, resume=False, allow_move=False, metrics_file=metrics)
    msg = str(err.value)
    assert "step-00000004" in msg and "run run-a" in msg
    assert "checkpoint.resume: true" in msg and "checkpoint.move_aside: true" in msg
    assert _names(ckpts) == ["step-00000002", "step-00000004"] and metrics.is_file()  # nothing touched

    path, run_id, _ = claim(ckpts, resume=True, allow_move=False, metrics_file=metrics)
    assert path == ckpts / "step-00000004" and run_id == "run-a"  # a resume continues that run, under its id

    path, run_id, _ = claim(ckpts, resume=False, allow_move=True, metrics_file=metrics)
    assert path is None and run_id not in ("run-a", LEGACY_RUN)
    (aside,) = tmp_path.glob("aside-*")
    assert _names(aside / "checkpoints") == ["step-00000002", "step-00000004"]
    assert (aside / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not ckpts.exists() and not metrics.exists()
    _, again, _ = claim(ckpts, resume=False, allow_move=False, metrics_file=metrics)
    assert again != run_id  # every start without a resume is a new run


def test_checkpoints_without_run_id_are_one_legacy_run(tmp_path):
    ckpts = tmp_path / "checkpoints"
    _fake(ckpts, 2, None)
    _fake(ckpts, 4, None)
    assert checkpoint_run_id(ckpts / "step-00000004") == LEGACY_RUN
    with pytest.raises(ParsitError, match="written before run ids"):
        claim(ckpts, resume=False, allow_move=False, metrics_file=tmp_path / "m.jsonl")
    path, run_id, _ = claim(ckpts, resume=True, allow_move=False, metrics_file=tmp_path / "m.jsonl")
    assert path == ckpts / "step-00000004" and run_id == LEGACY_RUN
    _fake(ckpts, 6, run_id)  # the resumed run's next checkpoint: pruning treats the old ones as its own
    prune(ckpts, 2, run_id)
    assert _names(ckpts) == ["step-00000004", "step-00000006"]


def test_marker_is_written_after_every_file_and_folder_is_fsynced(tmp_path, monkeypatch):
    path = _fake(tmp_path / "checkpoints", 1, None, complete=False)
    synced, real_fsync = [], os.fsync

    def fsync(fd: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        synced.append((target, (path / COMPLETE_MARKER).exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_complete_marker(path, 1, world_size=1, run_id="run-a")
    before = {p for p, marker_there in synced if not marker_there}
    everything = {path, *path.rglob("*")} - {path / COMPLETE_MARKER}
    assert everything <= before, everything - before
    assert path in {p for p, marker_there in synced if marker_there}  # the rename of the marker, too


# --- the real trainer -----------------------------------------------------------------------------------
def _launch(cfg: dict, path: Path) -> int:
    from parsit_train.launch import LaunchSpec, launch

    return launch(LaunchSpec(config=write_config(path, cfg), nproc=1, master_port=free_port(), timeout_s=180))


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_start_over_keeps_the_old_run_aside_and_a_resume_continues_the_new_one(tmp_path):
    build = make_build(tmp_path / "data", n=8)
    out = tmp_path / "out"
    base = tiny_config(build, out, optim={"max_steps": 2}, checkpoint={"every_steps": 1, "keep_last": 1,
                                                                      "export_hf": False})
    assert _launch(base, tmp_path / "a.yaml") == 0
    a_ckpt = out / "checkpoints" / "step-00000002"
    a_run = checkpoint_run_id(a_ckpt)
    a_metrics = (out / "metrics.jsonl").read_text()

    over = {**base, "seed": 1, "checkpoint": {**base["checkpoint"], "resume": False}}
    with pytest.raises(ParsitError, match="holds another run's complete checkpoints"):
        _launch(over, tmp_path / "b.yaml")  # refused by launch, before any rank started
    assert checkpoint_run_id(a_ckpt) == a_run and (out / "metrics.jsonl").read_text() == a_metrics

    over["checkpoint"]["move_aside"] = True
    assert _launch(over, tmp_path / "b.yaml") == 0
    (aside,) = out.glob("aside-*")
    assert checkpoint_run_id(aside / "checkpoints" / "step-00000002") == a_run  # A's, intact
    assert (aside / "metrics.jsonl").read_text() == a_metrics
    b_run = checkpoint_run_id(a_ckpt)  # B's own step 2, not A's overwritten
    assert b_run not in (None, a_run)
    b_metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b_metrics] == [1, 2]

    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000002"]  # B's, pruned to 1
    # the next default launch (resume: true) continues B, not A (what rank 0 decides at start)
    path, run_id, _ = claim(out / "checkpoints", resume=True, allow_move=False, metrics_file=out / "metrics.jsonl")
    assert (path, run_id) == (a_ckpt, b_run)
