"""Starting the rank processes: torchrun (one node or several) or Ray Train (a Ray cluster).

Both paths end in :func:`parsit_train.train.train` on every rank. The config is validated here, in the
launching process, and the builds are opened and their shards hashed here too
(:func:`parsit_train.preflight.verify_before_launch`), so a typo or a corrupt shard is reported once,
before any worker starts, and the ranks do not hash the shards again.

torchrun's agent is started as ``python -m parsit_train.agent`` (torchrun's own parser and
``elastic_launch``, with the same interpreter, no reliance on a ``torchrun`` script on PATH), in its own
process group. When a rank fails the agent stops the others; launch then kills whatever is left of
every rank (torchrun starts each in its own session) and raises :class:`RankFailed` with the failing
rank's own error, once (:mod:`parsit_train.faults`).

Stopped from outside (SIGTERM from ``timeout``, a scheduler or a container runtime; SIGINT; SIGHUP), launch
does not just die, leaving its agent and ranks running: it sends SIGTERM to the agent, which sends it to
every rank (and their loader workers) and gives them ``STOP_GRACE_S`` to exit (a rank writing a
checkpoint finishes it first, or abandons it: the completion marker is written last, by rename), then
SIGKILLs them; launch then SIGKILLs whatever of the whole process tree is left and raises :class:`Stopped`
(``parsit-train launch`` exits with 128 + the signal number).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from parsit_data.errors import ParsitError
from parsit_train.config import load_config
from parsit_train.faults import (
    AGENT_REPORT,
    LAUNCH_DIR_ENV,
    STOP_SIGNALS,
    describe_failure,
    kill_tree,
    process_tree,
    stop_leftover_ranks,
)

log = logging.getLogger(__name__)

# Environment every worker gets unless the caller set it: offline hub, no tokenizer thread pools that
# fight the ranks for cores, and the CPU accelerator when there is no GPU.
_WORKER_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class LaunchSpec:
    config: Path
    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    timeout_s: float | None = None
    stop_after: int | None = None
    overrides: tuple[str, ...] = ()
    verify: bool = True  # open and hash the builds here before starting the ranks


class RankFailed(ParsitError):
    """A rank failed mid-run (raised or was killed); the message is that rank's own error."""


class Stopped(ParsitError):
    """launch was stopped by a signal (``signum``); every process of the run was stopped."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class _Signalled(BaseException):  # BaseException: no ``except Exception`` on the way swallows it
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# Seconds the ranks get after SIGTERM to exit (finishing or abandoning a checkpoint) before SIGKILL.
STOP_GRACE_S = 30


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency of the train extra
        return False


def worker_env(base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    for key, value in _WORKER_ENV.items():
        env.setdefault(key, value)
    if not _has_cuda():
        env.setdefault("DS_ACCELERATOR", "cpu")
    # Workers import parsit from the same tree as the launcher (a checkout run without installing).
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def torchrun_command(spec: LaunchSpec, report: Path) -> list[str]:
    cmd = [
        sys.executable, "-m", "parsit_train.agent", str(report),
        f"--nproc-per-node={spec.nproc}",
        f"--nnodes={spec.nnodes}",
        f"--node-rank={spec.node_rank}",
        f"--master-addr={spec.master_addr}",
        f"--master-port={spec.master_port}",
        f"--shutdown-timeout={STOP_GRACE_S}",
        "-m", "parsit_train.cli.main", "train", "--config", str(spec.config),
    ]
    if spec.stop_after is not None:
        cmd += ["--stop-after", str(spec.stop_after)]
    for item in spec.overrides:
        cmd += ["--set", item]
    return cmd


def launch(spec: LaunchSpec) -> int:
    """Validate the config, verify the builds, start ``nproc`` ranks on this node with torchrun, wait.

    Returns 0; raises ParsitError before starting anything for a bad config or build, RankFailed when a
    rank failed, ParsitError when ``timeout_s`` passed (every process of the run is stopped in all cases).
    """
    if spec.nproc < 1 or spec.nnodes < 1 or not 0 <= spec.node_rank < spec.nnodes:
        raise ParsitError(f"bad launch geometry: nproc={spec.nproc}, nnodes={spec.nnodes}, node_rank={spec.node_rank}")
    cfg = load_config(spec.config, list(spec.overrides))  # fail here, once, not in every worker
    refuse_foreign_checkpoints(cfg)
    folder = Path(tempfile.mkdtemp(prefix="parsit-launch-"))
    try:
        if spec.verify and os.environ.get("PARSIT_LAUNCH_NO_VERIFY") != "1":  # the variable: a benchmark hook
            from parsit_train.preflight import verify_before_launch

            seconds = verify_before_launch(cfg, folder)
            log.info("data checked in %.2fs (%s)", seconds,
                     "shards hashed" if cfg.data.verify == "full" else "data.verify: size, not hashed")
        return _run_agent(spec, cfg, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def refuse_foreign_checkpoints(cfg) -> None:
    """A new run (``checkpoint.resume: false``) in an output_dir whose checkpoints/ holds another run's
    complete checkpoints is refused here, before any rank starts, unless ``checkpoint.move_aside`` (rank 0
    moves them; :func:`parsit_train.checkpoint_files.claim` decides again there, authoritatively)."""
    from parsit_train.checkpoint_files import foreign_problem

    if not cfg.checkpoint.resume and not cfg.checkpoint.move_aside:
        problem = foreign_problem(cfg.checkpoint_dir())
        if problem is not None:
            raise ParsitError(problem)


def _run_agent(spec: LaunchSpec, cfg, folder: Path) -> int:
    cmd = torchrun_command(spec, folder / AGENT_REPORT)
    log.info("starting: %s", " ".join(cmd))
    env = worker_env()
    env[LAUNCH_DIR_ENV] = str(folder)
    proc = None
    with _stop_signals_raise():
        try:
            proc = subprocess.Popen(cmd, env=env, start_new_session=True)
            code = proc.wait(timeout=spec.timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc, folder)
            raise ParsitError(f"training did not finish within {spec.timeout_s:.0f}s; it was stopped (raise --timeout)") from None
        except _Signalled as sig:
            name = signal.Signals(sig.signum).name
            log.warning("%s: stopping the run (the ranks get up to %ds to finish a checkpoint being written)",
                        name, STOP_GRACE_S)
            if proc is not None:
                _stop(proc, folder)
            raise Stopped(f"stopped by {name}: every process of the run was stopped; {_next_time(cfg)}",
                          sig.signum) from None
        except KeyboardInterrupt:  # launch called outside the main thread: no handlers of ours
            if proc is not None:
                _stop(proc, folder)
            raise
    stop_leftover_ranks(folder)
    if code != 0:
        raise RankFailed(f"{describe_failure(folder, code)}\nthe other ranks were stopped; {_next_time(cfg)}")
    return 0


def _next_time(cfg) -> str:
    from parsit_train.checkpoint_files import latest_checkpoint

    ckpt = latest_checkpoint(cfg.checkpoint_dir())
    if ckpt is not None and not cfg.checkpoint.resume:
        return f"set checkpoint.resume: true and run the command again to resume from {ckpt}"
    if ckpt is not None:
        return f"run the same command again to resume from {ckpt}"
    return "no complete checkpoint yet: running the same command again starts from step 0"


@contextlib.contextmanager
def _stop_signals_raise():
    """Inside: a stop signal (SIGTERM, SIGINT, SIGHUP) raises :class:`_Signalled` in launch (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise _Signalled(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)


def _stop(proc: subprocess.Popen, folder: Path) -> None:
    """SIGTERM the agent's group (it SIGTERMs its ranks and SIGKILLs them after STOP_GRACE_S), then SIGKILL
    whatever of the run's process tree is left. Further stop signals are ignored meanwhile (it is bounded)."""
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS} if main else {}
    try:
        tree = process_tree(proc.pid)  # the agent, its ranks, their loader workers
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S + 15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        stop_leftover_ranks(folder)
        kill_tree(tree)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)


# --- Ray Train ------------------------------------------------------------------------------------------
def _ray_worker(loop_config: dict) -> None:
    """One Ray Train worker: Ray has set up torch.distributed; expose it the way DeepSpeed expects."""
    import ray.train

    from parsit_train.train import train

    ctx = ray.train.get_context()
    os.environ.update({
        "RANK": str(ctx.get_world_rank()),
        "WORLD_SIZE": str(ctx.get_world_size()),
        "LOCAL_RANK": str(ctx.get_local_rank()),
        "LOCAL_WORLD_SIZE": str(ctx.get_local_world_size()),
    })
    for key, value in loop_config["env"].items():
        os.environ.setdefault(key, value)
    cfg = load_config(loop_config["config"], loop_config["overrides"])
    result = train(cfg, stop_after=loop_config["stop_after"])
    ray.train.report({"steps": result.steps, "last_loss": result.losses[-1] if result.losses else None})


def launch_ray(spec: LaunchSpec, address: str | None, use_gpu: bool | None = None) -> dict:
    """Run ``nproc`` workers with Ray Train's TorchTrainer (``address`` None: a local embedded Ray).

    The config path must be readable at the same path on every worker (shared storage), and
    ``output_dir`` should be shared storage too: every rank writes its part of a checkpoint there.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = load_config(spec.config, list(spec.overrides))
    refuse_foreign_checkpoints(cfg)
    gpu = _has_cuda() if use_gpu is None else use_gpu
    env = {k: v for k, v in worker_env().items() if k in {*_WORKER_ENV, "DS_ACCELERATOR", "PYTHONPATH"}}
    if not ray.is_initialized():
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"config": str(Path(spec.config).resolve()), "overrides": list(spec.overrides),
                           "stop_after": spec.stop_after, "env": env},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo", timeout_s=int(cfg.deepspeed.comm_timeout_s)),
        scaling_config=ScalingConfig(num_workers=spec.nproc, use_gpu=gpu),
        run_config=RunConfig(name=cfg.run_name, storage_path=str(cfg.output_dir / "ray")),
    )
    result = trainer.fit()
    if result.error:
        raise ParsitError(f"Ray Train run failed: {result.error}")
    # Ray Train keeps reported metrics with checkpoints only; the run's own record is metrics.jsonl.
    return {"output_dir": str(cfg.output_dir), **dict(result.metrics or {})}
