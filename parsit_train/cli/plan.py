"""``parsit-train plan``: the token utilisation a build would get padded, length-grouped and packed."""

from __future__ import annotations

from pathlib import Path

import typer


def plan_command(
    builds: list[Path] = typer.Argument(..., help="Build directories (as data.builds)."),
    micro_batch_size: int = typer.Option(4, "--micro-batch-size", "-b", help="Samples per padded micro-batch."),
    pack_length: int = typer.Option(4096, "--pack-length", "-p", help="Tokens per pack."),
    max_images: int = typer.Option(None, "--max-images-per-pack", help="Cap on a pack's images."),
    tokenizer: str = typer.Option("qwen3", "--tokenizer", help="The builds' tokenizer ('qwen3' or a folder)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Show the token utilisation of a build: padded, length-grouped and packed (epoch 0's order)."""
    from parsit_train.plan import plan_report

    report = plan_report(builds, micro_batch_size=micro_batch_size, pack_length=pack_length, tokenizer=tokenizer,
                         max_images_per_pack=max_images, seed=seed)
    for line in report.lines():
        typer.echo(line)
