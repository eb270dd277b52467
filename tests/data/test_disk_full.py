"""A build whose output fills up stops with one clear line (path and cause), leaves nothing incomplete
under a final name, and resumes byte-identically once there is space again.

Two real ways to run out: a small tmpfs (needs root and mount, as in CI containers run as root), and
a file-size limit (``RLIMIT_FSIZE``, with SIGXFSZ ignored so that a write fails with EFBIG), which any
user can set for a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from parsit_data.format import MANIFEST_NAME, QUARANTINE_NAME, read_shard

from validate_helpers import save_image

pytestmark = pytest.mark.timeout(180)

ROWS = 24


def _inputs(tmp: Path) -> tuple[Path, Path]:
    """Records with distinct, incompressible images, so that each shard is ~100 KB."""
    import random

    from PIL import Image

    root = tmp / "images"
    root.mkdir()
    rnd = random.Random(0)
    lines = []
    for i in range(ROWS):
        Image.frombytes("RGB", (96, 96), rnd.randbytes(96 * 96 * 3)).save(root / f"{i}.png")
        lines.append(json.dumps({"id": f"r{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": f"Noise number {i}."}]}))
    lines.append('{"id": "broken"')  # one quarantined record too
    src = tmp / "in.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return src, root


def _cli(src: Path, root: Path, out: Path, preexec=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from parsit_data.cli.main import main; main()", "build", str(src),
           "--image-root", str(root), "--out", str(out), "--shard-rows", "4", "--engine", "local"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=150, preexec_fn=preexec,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                               "COLUMNS": "1000"})  # (rich wraps the error line at 80 columns otherwise)


def _digests(out: Path) -> dict[str, str]:
    """Every file of a finished build but the manifest's timing and the report (which names the out dir)."""
    files = {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((out / "shards").iterdir())}
    files[QUARANTINE_NAME] = hashlib.sha256((out / QUARANTINE_NAME).read_bytes()).hexdigest()
    m = json.loads((out / MANIFEST_NAME).read_text())
    m.pop("timing")  # (the output directory is not part of the config: the rest must match exactly)
    files[MANIFEST_NAME] = json.dumps(m, sort_keys=True)
    return files


def _assert_nothing_incomplete(out: Path) -> None:
    assert not (out / MANIFEST_NAME).exists()
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert leftovers == [], leftovers
    for shard in (out / "shards").glob("*.arrow"):  # every shard under its final name reads whole
        read_shard(shard)
    for part in (out / "_parts").glob("part-*.json"):
        meta = json.loads(part.read_text())
        assert hashlib.sha256((out / meta["shard"]["path"]).read_bytes()).hexdigest() == meta["shard"]["sha256"]


def _one_error_line(proc: subprocess.CompletedProcess, path_part: str, cause: str) -> None:
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert path_part in errors[0] and cause in errors[0], errors[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    src, root = _inputs(tmp)
    proc = _cli(src, root, tmp / "out")
    assert proc.returncode == 0, proc.stderr
    return src, root, _digests(tmp / "out")


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                           capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def test_full_tmpfs_stops_with_one_line_and_resumes_identically(reference, tmp_path):
    src, root, want = reference
    mnt = tmp_path / "small"
    if os.geteuid() != 0 or not _mount_tmpfs(mnt, "200k"):
        pytest.skip("mounting a tmpfs needs root (the RLIMIT_FSIZE test below covers any user)")
    try:
        out = mnt / "out"
        proc = _cli(src, root, out)
        _one_error_line(proc, str(out), "No space left on device")
        _assert_nothing_incomplete(out)
        done = len(list((out / "_parts").glob("part-*.json")))
        subprocess.run(["mount", "-o", "remount,size=20m", str(mnt)], check=True, timeout=20)
        proc = _cli(src, root, out)
        assert proc.returncode == 0, proc.stderr
        assert _digests(out) == want
        assert done >= 1  # some partitions were finished before the disk filled, and were reused
    finally:
        subprocess.run(["umount", "-l", str(mnt)], timeout=20)


def test_file_size_limit_stops_with_one_line_and_resumes_identically(reference, tmp_path):
    src, root, want = reference
    out = tmp_path / "out"
    limit = 200_000  # bytes: a few shards fit, the merged quarantine does too, the report does not

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = _cli(src, root, out, preexec=limited)
    _one_error_line(proc, str(out), "File too large")
    _assert_nothing_incomplete(out)
    proc = _cli(src, root, out)
    assert proc.returncode == 0, proc.stderr
    assert _digests(out) == want
