"""``parsit-data validate``: check inputs without building; a summary table by source and reason.

Exit codes: 0 when every record passed, 1 when some were rejected, 2 on usage errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from parsit_data.errors import ParsitError

console = Console()


def validate_command(
    inputs: Annotated[list[Path], typer.Argument(help="Input files: JSON list, JSONL, or a LLaVA-NeXT YAML mixture.",
                                                 show_default=False)],
    image_root: Annotated[Optional[Path], typer.Option(help="Folder that image paths are relative to; paths may not "
                                                            "leave it.")] = None,
    image_check: Annotated[str, typer.Option(help="'full' decodes every image (catches truncated files); 'header' "
                                                  "reads headers only (fast first pass).")] = "full",
    quarantine_out: Annotated[Optional[Path], typer.Option(help="Write rejected records here, one JSON line each "
                                                                "(the build's quarantine.jsonl format).")] = None,
    min_image_side: Annotated[int, typer.Option(help="Reject images whose shorter side is below N; 0 disables.")] = 0,
    max_image_pixels: Annotated[int, typer.Option(help="Reject images with more pixels (decompression bomb "
                                                       "guard).")] = 64_000_000,
    fix_missing_placeholder: Annotated[bool, typer.Option(help="Count records whose one image lacks <image> as "
                                                               "fixable (the build inserts it) instead of "
                                                               "rejecting them.")] = False,
    template: Annotated[str, typer.Option(help="Template the records are rendered with (as in build); its control "
                                               "tokens may not appear in text.")] = "qwen_1_5",
    label_policy: Annotated[str, typer.Option(help="Label policy (as in build).")] = "native",
    tokenizer: Annotated[str, typer.Option(help="Tokenizer whose special tokens text may not contain ('qwen3': the "
                                                "bundled Qwen3 tokenizer; 'none': the template's tokens only).")]
    = "qwen3",
    seed: Annotated[int, typer.Option(help="Seed for random:N% sampling strategies (as in build).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; the exit code says it.")] = False,
) -> None:
    """Run every check that needs no tokenization (all but 'overlong') and summarise by source and reason."""
    from parsit_data.images import ImageOptions
    from parsit_data.precheck import precheck
    from parsit_data.templates import get_template
    from parsit_data.tokenizer import load_tokenizer
    from parsit_data.validate import ValidationOptions, control_tokens_of

    if image_check not in ("full", "header"):
        raise ParsitError(f"--image-check {image_check!r}: choose full or header")
    if min_image_side < 0 or max_image_pixels <= 0:
        raise ParsitError("--min-image-side must be >= 0 and --max-image-pixels > 0")
    tok_path = None if tokenizer.lower() == "none" else tokenizer
    tok = load_tokenizer(tok_path) if tok_path else None
    tmpl = get_template(template, tok_path)
    tmpl.check_policy(label_policy)
    vopts = ValidationOptions(control_tokens_of(tmpl, tok), fix_missing_placeholder)
    iopts = ImageOptions(root=image_root, max_pixels=max_image_pixels, min_side=min_image_side, check=image_check)
    result = precheck(inputs, vopts=vopts, iopts=iopts, template=tmpl, label_policy=label_policy,
                      quarantine_out=quarantine_out, seed=seed)
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
