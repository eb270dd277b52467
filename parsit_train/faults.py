"""How a failing rank is reported once, and the test hook that makes one fail.

``parsit-train launch`` gives every rank it starts a private folder (``PARSIT_LAUNCH_DIR``, node-local)::

    pids/rank<R>              the rank's pid: launch kills what is left of it (and its loader workers)
    failures/rank<R>.json     written by a rank that raised: time, message, traceback (the rank prints nothing)
    agent.json                written by the agent (``parsit_train.agent``): exit code / signal of each rank
    data_verified.json        the data stamp (``parsit_train.preflight``)

When torchrun's agent sees a rank fail it stops the others (SIGTERM, then SIGKILL). A survivor that was
waiting in a collective may fail too before it is stopped ("Connection closed by peer"): that is a
consequence, not the cause. :func:`describe_failure` picks the cause: the earliest rank that raised an
error that is not a communication error, else a rank that died by a signal nobody in the launch sent
(SIGKILL from the OOM killer, a segfault) or exited non-zero without a word, else the earliest
communication error (or error relayed from another rank).

``PARSIT_TEST_FAIL_AT`` is a TEST HOOK (used by tests/train/test_launch_faults.py, never needed in a
real run): ``RANK:STEP:KIND[,RANK:STEP:KIND...]`` makes rank RANK fail after optimizer step STEP, with
KIND ``raise`` (a RuntimeError), ``kill`` (SIGKILL to itself) or ``kill-in-checkpoint`` (SIGKILL while the
checkpoint of step STEP is being written: after its own and DeepSpeed's files, before the completion
marker).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from parsit_data.errors import ParsitError

LAUNCH_DIR_ENV = "PARSIT_LAUNCH_DIR"
FAIL_AT_ENV = "PARSIT_TEST_FAIL_AT"
AGENT_REPORT = "agent.json"
_KINDS = ("raise", "kill", "kill-in-checkpoint")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Substrings of the errors a rank gets when a peer vanished under a collective (gloo, NCCL, the store).
_COMM_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo", "NCCL",
                 "DistBackendError", "DistNetworkError", "DistStoreError", "Socket Timeout", "timed out")


def launch_dir() -> Path | None:
    value = os.environ.get(LAUNCH_DIR_ENV)
    return Path(value) if value else None


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


# --- rank side -----------------------------------------------------------------------------------------
def register_rank() -> None:
    """Record this rank's pid in the launch folder (no-op outside ``parsit-train launch``)."""
    folder = launch_dir()
    if folder is None:
        return
    (folder / "pids").mkdir(parents=True, exist_ok=True)
    (folder / "pids" / f"rank{_rank()}").write_text(str(os.getpid()))


@contextlib.contextmanager
def rank_failure_report() -> Iterator[None]:
    """Under ``launch``: an exception of this rank goes to ``failures/rank<R>.json`` (launch prints it once)
    and the rank exits with code 1 without printing it. Elsewhere: nothing changes."""
    folder = launch_dir()
    if folder is None:
        yield
        return
    register_rank()
    try:
        yield
    except Exception as exc:
        record = {
            "rank": _rank(),
            "time": time.time(),
            "type": type(exc).__name__,
            "message": str(exc),
            "user_error": isinstance(exc, ParsitError),
            "relayed": getattr(exc, "origin_rank", None) is not None,  # another rank's error (preflight.agree)
            "traceback": "".join(traceback.format_exception(exc)),
        }
        (folder / "failures").mkdir(parents=True, exist_ok=True)
        tmp = folder / "failures" / f".rank{_rank()}.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(folder / "failures" / f"rank{_rank()}.json")
        raise SystemExit(1) from None


def _fail_plan() -> dict[tuple[int, int], str]:
    raw = os.environ.get(FAIL_AT_ENV, "").strip()
    plan = {}
    for item in filter(None, (s.strip() for s in raw.split(","))):
        parts = item.split(":")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit() or parts[2] not in _KINDS:
            raise ParsitError(f"{FAIL_AT_ENV}={raw!r}: expected RANK:STEP:KIND with KIND one of {', '.join(_KINDS)}")
        plan[(int(parts[0]), int(parts[1]))] = parts[2]
    return plan


def fail_hook(rank: int, step: int, where: str) -> None:
    """TEST HOOK (see module doc): fail here if ``PARSIT_TEST_FAIL_AT`` asks for it. ``where``: "step" after an
    optimizer step, "checkpoint" inside the checkpoint of that step."""
    if FAIL_AT_ENV not in os.environ:
        return
    kind = _fail_plan().get((rank, step))
    if kind is None or (kind == "kill-in-checkpoint") != (where == "checkpoint"):
        return
    if kind == "raise":
        raise RuntimeError(f"{FAIL_AT_ENV}: injected failure on rank {rank} after step {step}")
    os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def finish_before_stopping() -> Iterator[None]:
    """Rank side, around the writing of a checkpoint: SIGTERM / SIGINT / SIGHUP received inside the block take
    effect when it ends (the checkpoint finished, or failed), with their usual handling; outside such a block
    they act at once (a Python rank dies on SIGTERM). Whatever stops the rank, the completion marker is
    written last and by rename, so a checkpoint is never marked complete before it is. Main thread only
    (elsewhere, e.g. a Ray Train worker thread, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: received.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if received:
            signal.raise_signal(received[0])


# --- launch side ---------------------------------------------------------------------------------------
def process_tree(root: int) -> dict[int, str]:
    """{pid: start time} of ``root`` and every process descended from it, now (Linux ``/proc``; {} elsewhere).
    The start time tells a process from a later one that reuses its pid."""
    parent_of, started = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ..., starttime (20th)
        parent_of[int(entry.name)] = int(fields[1])
        started[int(entry.name)] = fields[19]
    tree, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in started and pid not in tree:
            tree[pid] = started[pid]
            frontier.extend(child for child, parent in parent_of.items() if parent == pid)
    return tree


def kill_tree(tree: dict[int, str]) -> list[int]:
    """SIGKILL every process of a :func:`process_tree` snapshot that is still the same process; returns them."""
    killed = []
    for pid, started in tree.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[19] != started or fields[0] == "Z":
            continue  # another process now, or already dead (a zombie waiting for its parent)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def stop_leftover_ranks(folder: Path) -> list[int]:
    """SIGKILL the process group of every rank of this launch that is still alive; returns their pids.

    torchrun starts each rank in its own session, so killing torchrun's group does not reach them; the
    pid is checked against the rank's environment (it names this launch folder) before it is signalled.
    """
    killed = []
    for pid_file in sorted((folder / "pids").glob("rank*")):
        try:
            pid = int(pid_file.read_text())
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except (OSError, ValueError):
            continue  # gone (or not Linux: nothing to check against)
        if f"{LAUNCH_DIR_ENV}={folder}".encode() not in environ.split(b"\0"):
            continue  # the pid was reused by another process
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def _is_comm_error(rec: dict) -> bool:
    text = f"{rec.get('type', '')}: {rec.get('message', '')}"
    return any(m.lower() in text.lower() for m in _COMM_MARKERS)


def describe_failure(folder: Path, exit_code: int) -> str:
    """One message for a failed launch: the rank that caused it and its own error (see module doc)."""
    raised = []
    for path in (folder / "failures").glob("rank*.json"):
        with contextlib.suppress(OSError, ValueError):
            raised.append(json.loads(path.read_text()))
    raised.sort(key=lambda r: r["time"])
    agent = {}
    with contextlib.suppress(OSError, ValueError):
        agent = json.loads((folder / AGENT_REPORT).read_text())
    if agent.get("agent_error"):
        return f"the torchrun agent failed: {agent['agent_error']}"
    wrote = {r["rank"] for r in raised}
    died = [(int(rank), f) for rank, f in agent.get("ranks", {}).items()
            if int(rank) not in wrote and f["exitcode"] != -signal.SIGTERM]

    def from_record(rec: dict) -> str:
        if rec["user_error"]:
            return f"rank {rec['rank']} failed: {rec['message']}"
        return f"rank {rec['rank']} failed:\n{rec['traceback'].rstrip()}"

    first = next((r for r in raised if not _is_comm_error(r) and not r.get("relayed")), None)
    if first is not None:
        return from_record(first)
    if died:
        rank, f = min(died, key=lambda x: (x[1]["timestamp"], x[0]))
        if f["exitcode"] < 0:
            name = signal.Signals(-f["exitcode"]).name
            why = " (the OOM killer, a preemption or kill -9)" if name == "SIGKILL" else ""
            return f"rank {rank} (pid {f['pid']}) was killed by {name}{why}"
        return f"rank {rank} (pid {f['pid']}) exited with code {f['exitcode']} without reporting an error"
    if raised:
        return from_record(raised[0])
    return f"the training processes exited with code {exit_code}"
