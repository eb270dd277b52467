"""``parsit-data validate``: check inputs without building; a summary table by source and reason.

Exit codes: 0 when every record passed, 1 when some were rejected, 2 on usage errors. Options, defaults
and help come from :class:`parsit_data.config.ValidateConfig`; those it shares with the build are
declared once there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from parsit_data.config import ValidateConfig

console = Console()


V = ValidateConfig


def _opt(name: str, *decls: str) -> typer.models.OptionInfo:
    """A typer option whose help is the ValidateConfig field's description (the one source of truth)."""
    return typer.Option(*decls, help=V.help(name))


def validate_command(
    inputs: Annotated[list[str], typer.Argument(help=V.help("inputs"), show_default=False)],
    image_root: Annotated[Optional[str], _opt("image_root")] = V.default("image_root"),
    image_check: Annotated[str, _opt("image_check")] = V.default("image_check"),
    quarantine_out: Annotated[Optional[Path], _opt("quarantine_out")] = V.default("quarantine_out"),
    min_image_side: Annotated[int, _opt("min_image_side")] = V.default("min_image_side"),
    max_image_pixels: Annotated[int, _opt("max_image_pixels")] = V.default("max_image_pixels"),
    fix_missing_placeholder: Annotated[bool, _opt("fix_missing_placeholder")] = V.default("fix_missing_placeholder"),
    template: Annotated[str, _opt("template")] = V.default("template"),
    label_policy: Annotated[str, _opt("label_policy")] = V.default("label_policy"),
    tokenizer: Annotated[Optional[str], _opt("tokenizer")] = V.default("tokenizer"),
    seed: Annotated[int, _opt("seed")] = V.default("seed"),
    processor: Annotated[Optional[str], _opt("processor")] = V.default("processor"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; the exit code says it.")] = False,
) -> None:
    """Run every check that needs no tokenization (all but 'overlong') and summarise by source and reason."""
    from parsit_data.precheck import precheck
    from parsit_data.templates import get_template
    from parsit_data.tokenizer import load_tokenizer
    from parsit_data.validate import ValidationOptions, control_tokens_of

    cfg = ValidateConfig.parse(
        inputs=list(inputs), image_root=image_root or None, image_check=image_check,
        quarantine_out=str(quarantine_out) if quarantine_out else None, min_image_side=min_image_side,
        max_image_pixels=max_image_pixels, fix_missing_placeholder=fix_missing_placeholder, template=template,
        label_policy=label_policy, tokenizer=tokenizer, seed=seed, processor=processor)
    cfg.geometry  # a processor folder that is not a LLaVA family, or lacks a field: one error line, before any work
    tok = load_tokenizer(cfg.tokenizer_path) if cfg.tokenizer_path else None
    tmpl = get_template(cfg.template, cfg.tokenizer_path)
    tmpl.check_policy(cfg.label_policy)
    vopts = ValidationOptions(control_tokens_of(tmpl, tok), cfg.fix_missing_placeholder)
    result = precheck(cfg.inputs, vopts=vopts, iopts=cfg.image_options, template=tmpl, label_policy=cfg.label_policy,
                      quarantine_out=cfg.quarantine_out, seed=cfg.seed)
    if not quiet:
        _summary(result)
    raise typer.Exit(1 if result.rejected else 0)


def _summary(result) -> None:
    from parsit_data.reasons import explain

    t = Table(title="parsit-data validate")
    for col in ("source", "read", "passed", "rejected", "images", "placeholders inserted"):
        t.add_column(col, justify="left" if col == "source" else "right")
    for spec in result.specs:
        s = result.stats.sources[spec.name]
        t.add_row(spec.name, str(s.read), str(s.kept), str(sum(s.quarantined.values())), str(s.images),
                  str(s.placeholder_inserted))
    console.print(t)
    rows = [(spec.name, reason, n) for spec in result.specs
            for reason, n in sorted(result.stats.sources[spec.name].quarantined.items())]
    if rows:
        r = Table(title="rejected by reason")
        for col in ("source", "reason", "count", "meaning"):
            r.add_column(col, justify="right" if col == "count" else "left", no_wrap=col != "meaning")
        for name, reason, n in rows:
            r.add_row(name, reason, str(n), explain(reason))
        console.print(r)
    rate = result.read / max(result.seconds, 1e-9)
    console.print(f"{result.read} records, {result.rejected} rejected, {result.seconds:.2f}s ({rate:,.0f} records/s)",
                  highlight=False)
    if result.quarantine_path is not None:
        console.print(f"quarantine: {result.quarantine_path}", highlight=False)
    if result.rejected:
        console.print("not checked here (needs the tokenizer): overlong; run parsit-data build for that")


def register(app: typer.Typer) -> None:
    app.command("validate")(validate_command)
