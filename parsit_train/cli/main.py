"""``parsit-train``: validate a config, launch a run (torchrun or Ray), or run one rank in this process.

:func:`parsit_data.errors.run_app` turns a :class:`ParsitError` into ``error: ...`` and exit code 2
(for both console scripts). Every command is a few lines over a library function that the tests call directly.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import typer
from rich.console import Console

from parsit_data.errors import run_app
from parsit_train.cli.assemble import assemble_command
from parsit_train.cli.plan import plan_command

app = typer.Typer(
    name="parsit-train",
    help="Train LLaVA-style models (SigLIP + projector + Qwen3) on Parsit shards with DeepSpeed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

CONFIG = typer.Option(..., "--config", "-c", help="Training config (YAML).", exists=False)
SET = typer.Option(None, "--set", help="Override a config key: KEY.SUB=VALUE (YAML value); repeatable.")


@app.command("validate")
def validate_command(config: Path = CONFIG, overrides: list[str] = SET) -> None:
    """Check a training config (every problem at once) and print the resolved settings."""
    from parsit_train.config import load_config

    cfg = load_config(config, overrides)
    console.print(f"[green]ok[/]: {config}")
    console.print(f"  stage {cfg.stage}, trainable {cfg.trainable_parts()}, ZeRO {cfg.deepspeed.zero_stage}, "
                  f"bf16 {cfg.deepspeed.bf16}")
    console.print(f"  builds: {', '.join(str(b.path) for b in cfg.data.builds)}")
    console.print(f"  output: {cfg.output_dir}")


@app.command("schema")
def schema_command(out: Path = typer.Option(None, "--out", help="Write here (default: print).")) -> None:
    """Print (or write) the JSON Schema of the training config."""
    from parsit_train.config import schema_json, write_schema

    if out is None:
        typer.echo(schema_json(), nl=False)
    else:
        write_schema(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@app.command("launch")
def launch_command(
    config: Path = CONFIG,
    nproc: int = typer.Option(1, "--nproc", help="Processes (ranks) on this node: one per GPU, or CPU ranks."),
    nnodes: int = typer.Option(1, "--nnodes", help="Number of nodes (run this command on each)."),
    node_rank: int = typer.Option(0, "--node-rank", help="This node's rank, 0..nnodes-1."),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="Address of node 0."),
    master_port: int = typer.Option(None, "--master-port", help="Port on node 0 (default: free port, 29500 multi-node)."),
    ray_address: str = typer.Option(None, "--ray-address", help="Run on a Ray cluster with Ray Train ('auto', ray://...)."),
    timeout: float = typer.Option(None, "--timeout", help="Stop the run after this many seconds."),
    stop_after: int = typer.Option(None, "--stop-after", help="Checkpoint and stop at this step (a preemption drill)."),
    overrides: list[str] = SET,
) -> None:
    """Start the training processes (torchrun on this node, or Ray Train with --ray-address).

    Exit code 2: refused before any rank started (config, build); 1: a rank failed mid-run (its error is
    printed once; run the same command again to resume from the last complete checkpoint); 128 + N: stopped
    by signal N (SIGTERM, SIGINT, SIGHUP), after stopping every process of the run.
    """
    from parsit_train.launch import LaunchSpec, RankFailed, Stopped, launch, launch_ray

    port = master_port or (29500 if nnodes > 1 else _free_port())
    spec = LaunchSpec(config=config, nproc=nproc, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr,
                      master_port=port, timeout_s=timeout, stop_after=stop_after, overrides=tuple(overrides or ()))
    if ray_address is not None:
        metrics = launch_ray(spec, None if ray_address == "local" else ray_address)
        console.print(f"[green]done[/] (Ray Train): {metrics}")
        return
    try:
        launch(spec)
    except RankFailed as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except Stopped as exc:
        Console(stderr=True).print(f"[bold red]stopped:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(128 + exc.signum) from None


@app.command("train")
def train_command(
    config: Path = CONFIG,
    stop_after: int = typer.Option(None, "--stop-after", help="Checkpoint and stop at this step."),
    overrides: list[str] = SET,
) -> None:
    """Run one rank in this process (what `launch` starts under torchrun; alone it is a 1-process run)."""
    from parsit_train.config import load_config
    from parsit_train.faults import rank_failure_report
    from parsit_train.train import train

    with rank_failure_report():  # under `launch`: the error goes to launch, which prints it once
        cfg = load_config(config, overrides)
        train(cfg, stop_after=stop_after)


app.command("plan")(plan_command)
app.command("assemble")(assemble_command)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("parsit_train").setLevel(logging.INFO)
    run_app(app, argv)


if __name__ == "__main__":
    main()
