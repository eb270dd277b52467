"""The on-disk contract of a checkpoint folder: complete (marker written last, every file at its listed
size) or ignored. Plain files, no torch: launch reads it after a failure, tests check it without ranks.
The write order and the resume rules are in :mod:`parsit_train.checkpoint`.

Durability: before the marker is written every file of the checkpoint and every folder in it is fsync'ed,
then the marker (write, fsync, rename, fsync of the folder): a power cut cannot leave a marker that lists
files whose data never reached the disk. (On NFS, a file written by another node is flushed to the server
when that node closes it, before the barrier that precedes the marker.)

Whose checkpoints: every run has a run id (:func:`new_run_id`), written into each marker. A resumed run
takes the id of the checkpoint it resumed from; any other start (``checkpoint.resume: false``, or nothing
complete to resume) is a new run. :func:`claim` decides at start: a new run refuses a ``checkpoints/`` that
holds another run's complete checkpoints, unless told to move them aside (``checkpoint.move_aside``), so a
folder holds the complete checkpoints of one run; pruning keeps ``keep_last`` of this run's and never
removes another run's complete checkpoint. A marker written before run ids existed reads as the run
:data:`LEGACY_RUN`: the checkpoints of an older Parsit count as one run, which a resume continues
(pruning them as before) and a new run must move aside.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from parsit_data.errors import ParsitError

log = logging.getLogger(__name__)

COMPLETE_MARKER = "parsit_complete.json"
LATEST = "latest"
LEGACY_RUN = "legacy"  # the run id of a checkpoint whose marker has none (written before run ids)
ASIDE = "aside-{stamp}"


def tag(step: int) -> str:
    return f"step-{step:08d}"


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, text: str) -> None:
    """Write-and-rename with the data and the rename on disk before it returns."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync(path.parent)


def write_complete_marker(path: Path, step: int, world_size: int, run_id: str) -> None:
    """Mark ``path`` complete: list every file under it with its size, after fsync'ing every file and
    folder of it. Written last, by rank 0."""
    entries = sorted(path.rglob("*"))
    files = {str(f.relative_to(path)): f.stat().st_size for f in entries if f.is_file()}
    for f in entries:
        _fsync(f)  # files and folders (a folder's fsync makes the names in it durable)
    _fsync(path)
    _write_durably(path / COMPLETE_MARKER,
                   json.dumps({"step": step, "world_size": world_size, "run_id": run_id, "files": files}, indent=1))


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint folder ``path`` must not be loaded, or None when it is complete."""
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        return f"no {COMPLETE_MARKER}: it was being written when the run stopped"
    try:
        files = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError) as exc:
        return f"unreadable {COMPLETE_MARKER} ({exc})"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {COMPLETE_MARKER} says {size} (truncated or replaced)"
    return None


def checkpoint_run_id(path: Path) -> str | None:
    """The run id in the marker of ``path`` (:data:`LEGACY_RUN` for a marker without one, None if unreadable)."""
    try:
        return str(json.loads((path / COMPLETE_MARKER).read_text()).get("run_id") or LEGACY_RUN)
    except (OSError, ValueError, AttributeError):
        return None


def checkpoint_world_size(path: Path) -> int | None:
    """The number of ranks that wrote the complete checkpoint ``path`` (from its marker; None if unknown)."""
    try:
        return int(json.loads((path / COMPLETE_MARKER).read_text())["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _step_folders(ckpt_dir: Path) -> list[Path]:
    """``step-*`` folders, newest first."""
    return sorted((p for p in ckpt_dir.glob("step-*") if p.is_dir()), reverse=True)


def complete_checkpoints(ckpt_dir: Path, run_id: str | None = None) -> list[Path]:
    """The complete checkpoints under ``ckpt_dir`` (of the run ``run_id`` only, when given), newest first."""
    return [p for p in _step_folders(ckpt_dir)
            if checkpoint_problem(p) is None and (run_id is None or checkpoint_run_id(p) == run_id)]


def find_resumable(ckpt_dir: Path, run_id: str | None = None) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest complete checkpoint, of the run ``run_id`` when given, or None; [(newer folder skipped, why)])."""
    skipped = []
    for path in _step_folders(ckpt_dir):
        problem = checkpoint_problem(path)
        if problem is None and run_id is not None and checkpoint_run_id(path) != run_id:
            problem = f"another run's checkpoint (run {checkpoint_run_id(path)})"
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint under ``ckpt_dir`` (None if there is none)."""
    return find_resumable(ckpt_dir)[0]


def point_latest(ckpt_dir: Path, name: str) -> None:
    _write_durably(ckpt_dir / LATEST, name)


def prune(ckpt_dir: Path, keep_last: int, run_id: str) -> None:
    """Keep the ``keep_last`` newest complete checkpoints of the run ``run_id``; remove its older ones and
    every incomplete folder (never loadable). Another run's complete checkpoints are left alone."""
    keep = set(complete_checkpoints(ckpt_dir, run_id)[:keep_last])
    for path in _step_folders(ckpt_dir):
        if path in keep:
            continue
        if checkpoint_problem(path) is None and checkpoint_run_id(path) != run_id:
            continue
        shutil.rmtree(path, ignore_errors=True)


def foreign_problem(ckpt_dir: Path) -> str | None:
    """Why a NEW run must not start in ``ckpt_dir`` (it holds another run's complete checkpoints), or None."""
    complete = complete_checkpoints(ckpt_dir)
    if not complete:
        return None
    runs = sorted({checkpoint_run_id(p) for p in complete})
    who = ", ".join("written before run ids" if r == LEGACY_RUN else f"run {r}" for r in runs)
    return (f"checkpoint.resume is false but {ckpt_dir} holds another run's complete checkpoints "
            f"({', '.join(p.name for p in complete)}; {who}), which this run would prune or overwrite and the next "
            f"launch would resume: set checkpoint.resume: true to continue that run, checkpoint.move_aside: true "
            f"to move them (and metrics.jsonl) to {ckpt_dir.parent / ASIDE.format(stamp='<time>')}/ and start over, "
            f"or choose another output_dir")


def move_aside(ckpt_dir: Path, metrics_file: Path) -> Path:
    """Move ``ckpt_dir`` and ``metrics_file`` (another run's) into a new ``aside-<time>`` folder next to them."""
    aside = ckpt_dir.parent / ASIDE.format(stamp=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    while aside.exists():
        aside = aside.with_name(aside.name + "+")
    aside.mkdir(parents=True)
    ckpt_dir.replace(aside / ckpt_dir.name)
    if metrics_file.is_file():
        metrics_file.replace(aside / metrics_file.name)
    return aside


def claim(ckpt_dir: Path, resume: bool, allow_move: bool, metrics_file: Path) -> tuple[Path | None, str, list]:
    """Rank 0 at start: (checkpoint to resume or None, this run's id, [(newer folder skipped, why)]).

    With ``resume`` and a complete checkpoint: that run continues, under its id. Otherwise a new run (new
    id), which refuses (ParsitError) a ``ckpt_dir`` holding another run's complete checkpoints unless
    ``allow_move``: then they, and ``metrics_file``, are moved aside first (and the log says where)."""
    if resume:
        path, skipped = find_resumable(ckpt_dir)
        if path is not None:
            return path, checkpoint_run_id(path), skipped
    else:
        skipped = []
    problem = foreign_problem(ckpt_dir)
    if problem is not None:
        if not allow_move:
            raise ParsitError(problem)
        aside = move_aside(ckpt_dir, metrics_file)
        log.warning("checkpoint.move_aside: another run's checkpoints and %s moved to %s", metrics_file.name, aside)
    return None, new_run_id(), skipped


def truncate_metrics(metrics_file: Path, step: int) -> None:
    """Keep the records of steps <= ``step`` (the ones the resumed state has seen)."""
    if not metrics_file.is_file():
        return
    lines = metrics_file.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by the crash
    if len(kept) != len(lines):
        tmp = metrics_file.with_suffix(".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(metrics_file)
        log.info("%s: dropped %d record(s) after step %d (the interrupted run's steps after its checkpoint)",
                 metrics_file.name, len(lines) - len(kept), step)
