"""``parsit-train launch`` stopped by a real SIGTERM (what ``timeout``, a scheduler or a container runtime
sends to the main process only) stops its whole process tree: the torchrun agent, both gloo ranks and their
loader workers are gone within a bound, and no checkpoint is marked complete that is not.

The signal is sent while a checkpoint is being written (a ``step-N`` folder without its completion marker
is polled for; checkpoints every step make the window frequent), so a rank is stopped mid-checkpoint: it
finishes it (then its marker lists every file at its size) or abandons it (no marker).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_build, tiny_config, write_config  # noqa: E402

from parsit_train.checkpoint_files import COMPLETE_MARKER, checkpoint_problem  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# launch gives the ranks 30 s to finish a checkpoint being written (a tiny one takes ~1 s); their loader
# workers leave within ~5 s of their rank (torch's watchdog). Measured: 7-11 s on 2 busy cores; today's
# code (launch dies alone) leaves all five processes running.
GRACE_BOUND_S = 60


def _stat(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()  # state, ppid, ..., starttime (index 19)


def _descendants(root: int) -> dict[int, str]:
    """{pid: start time} of root and everything under it (read here, independently of parsit_train.faults)."""
    parents, started = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents[int(entry.name)], started[int(entry.name)] = int(fields[1]), fields[19]
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in started and pid not in tree:
            tree[pid] = started[pid]
            todo += [child for child, parent in parents.items() if parent == pid]
    return tree


def _alive(tree: dict[int, str]) -> list[int]:
    """Pids of the snapshot still running as the same process (a zombie counts as gone)."""
    return [pid for pid, start in tree.items()
            if (fields := _stat(pid)) is not None and fields[19] == start and fields[0] != "Z"]


def _writing(ckpts: Path) -> Path | None:
    """A checkpoint folder being written now (no marker yet), once an earlier one is complete."""
    folders = sorted(ckpts.glob("step-*"))
    if len(folders) < 2 and not (folders and (folders[0] / COMPLETE_MARKER).exists()):
        return None
    newest = folders[-1] if folders else None
    return newest if newest is not None and not (newest / COMPLETE_MARKER).exists() else None


@pytest.mark.timeout(300)
def test_sigterm_to_launch_stops_every_process_and_marks_nothing_half_written(tmp_path):
    build = make_build(tmp_path / "data", n=8)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "train.yaml", tiny_config(
        build, out, optim={"max_steps": 500}, dataloader={"num_workers": 1},
        checkpoint={"every_steps": 1, "keep_last": 2, "export_hf": False}))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("PARSIT_TEST_FAIL_AT", None)
    log, tree = (tmp_path / "launch.log").open("w"), {}
    launcher = subprocess.Popen([sys.executable, "-m", "parsit_train.cli.main", "launch", "--config", str(cfg),
                                 "--nproc", "2"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, writing = time.time() + 200, None
        while writing is None and time.time() < deadline and launcher.poll() is None:
            writing = _writing(out / "checkpoints")
            time.sleep(0.005)
        assert writing is not None, (tmp_path / "launch.log").read_text()[-3000:]
        tree = _descendants(launcher.pid)
        launcher.send_signal(signal.SIGTERM)  # to launch alone, not its group
        t0 = time.time()
        assert len(tree) >= 6, tree  # launch, the agent, 2 ranks, a loader worker each (at least)
        code = launcher.wait(timeout=GRACE_BOUND_S + 30)
        while _alive(tree) and time.time() - t0 < GRACE_BOUND_S:
            time.sleep(0.1)
        left = _alive(tree)
        elapsed = time.time() - t0
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in _alive(tree):  # a failing run must not leave its processes behind (the fault under test)
            os.kill(pid, signal.SIGKILL)
        log.close()
    text = (tmp_path / "launch.log").read_text()
    assert not left, f"still running {elapsed:.0f}s after SIGTERM: {left}\n{text[-3000:]}"
    finished = (writing / COMPLETE_MARKER).exists()
    print(f"every process gone {elapsed:.1f}s after SIGTERM; {writing.name}, being written then, was "
          f"{'finished' if finished else 'abandoned'}")
    assert code == 128 + signal.SIGTERM, text[-3000:]
    assert "stopped by SIGTERM" in text and "resume from" in text
    for folder in sorted((out / "checkpoints").glob("step-*")):
        if (folder / COMPLETE_MARKER).exists():
            assert checkpoint_problem(folder) is None, folder  # marked complete => complete
