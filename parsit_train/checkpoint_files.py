"""The on-disk contract of a checkpoint folder: complete (marker written last, every file at its listed
size) or ignored. Plain files, no torch: launch reads it after a failure, tests check it without ranks.
The write order and the resume rules are in :mod:`parsit_train.checkpoint`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

COMPLETE_MARKER = "parsit_complete.json"
LATEST = "latest"


def tag(step: int) -> str:
    return f"step-{step:08d}"


def write_complete_marker(path: Path, step: int, world_size: int) -> None:
    """Mark ``path`` complete: list every file under it with its size. Written last, by rank 0."""
    files = {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file()}
    tmp = path / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps({"step": step, "world_size": world_size, "files": files}, indent=1))
    tmp.replace(path / COMPLETE_MARKER)


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


def checkpoint_world_size(path: Path) -> int | None:
    """The number of ranks that wrote the complete checkpoint ``path`` (from its marker; None if unknown)."""
    try:
        return int(json.loads((path / COMPLETE_MARKER).read_text())["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_resumable(ckpt_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest complete checkpoint or None, [(newer folder skipped, why)])."""
    skipped = []
    for path in sorted((p for p in ckpt_dir.glob("step-*") if p.is_dir()), reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint under ``ckpt_dir`` (None if there is none)."""
    return find_resumable(ckpt_dir)[0]


def point_latest(ckpt_dir: Path, name: str) -> None:
    tmp = ckpt_dir / (LATEST + ".tmp")
    tmp.write_text(name)
    tmp.replace(ckpt_dir / LATEST)


def prune(ckpt_dir: Path, keep_last: int) -> None:
    complete = [p for p in sorted(ckpt_dir.glob("step-*"), reverse=True) if p.is_dir() and checkpoint_problem(p) is None]
    keep = set(complete[:keep_last])
    for path in ckpt_dir.glob("step-*"):
        if path.is_dir() and path not in keep:
            shutil.rmtree(path, ignore_errors=True)


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
