"""torchrun's elastic agent, run quietly for ``parsit-train launch``.

``python -m parsit_train.agent REPORT TORCHRUN_ARGS...`` does what ``python -m torch.distributed.run
TORCHRUN_ARGS...`` does (the same parser, config and ``elastic_launch``; when one rank fails the agent
stops the others), but instead of raising torchrun's ``ChildFailedError`` (a 30-line traceback on
stderr) it writes each failed rank's exit code / signal to REPORT (JSON) and exits with code 1; launch
then prints the failing rank's own error once (:func:`parsit_train.faults.describe_failure`). The
agent's own log lines (``Sending process ... closing signal SIGTERM``, ``failed (exitcode: ...)``, the
OMP_NUM_THREADS banner) are dropped.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def _quiet() -> None:
    """Silence torch.distributed's loggers below CRITICAL (torch gives them their own handlers)."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith(("torch.distributed", "torch.multiprocessing")) and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    report = Path(argv[0])
    from torch.distributed.elastic.agent.server import local_elastic_agent  # noqa: F401 (its loggers, for _quiet)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    _quiet()

    try:
        config, cmd, cmd_args = config_from_args(parse_args(argv[1:]))
        elastic_launch(config=config, entrypoint=cmd)(*cmd_args)
    except ChildFailedError as exc:
        ranks = {str(rank): {"local_rank": f.local_rank, "pid": f.pid, "exitcode": f.exitcode, "timestamp": f.timestamp}
                 for rank, f in exc.failures.items()}
        report.write_text(json.dumps({"ranks": ranks}))
        return 1
    except SignalException as exc:  # launch stopped us (timeout, Ctrl-C): the workers are already closed
        return 128 + int(exc.sigval)
    except Exception as exc:  # rendezvous, a port in use, ...: one message, not the agent's traceback
        report.write_text(json.dumps({"agent_error": f"{type(exc).__name__}: {exc}"}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
