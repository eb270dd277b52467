"""``parsit-data build``: options, defaults and help from :class:`parsit_data.config.BuildConfig`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from parsit_data.config import BuildConfig

if TYPE_CHECKING:
    from parsit_data.format import Manifest

console = Console()
PROGRESS_EVERY_S = 1.0


B = BuildConfig


def _opt(name: str, *decls: str) -> typer.models.OptionInfo:
    """A typer option whose help is the BuildConfig field's description (the one source of truth)."""
    return typer.Option(*decls, help=B.help(name))


def build_command(
    # str, not Path: Path("s3://b/x") would become "s3:/b/x" (URIs are opened by parsit_data.format.fsio).
    inputs: Annotated[list[str], typer.Argument(help=B.help("inputs"), show_default=False)],
    out: Annotated[str, _opt("out", "--out", "-o")],
    tokenizer: Annotated[Optional[str], _opt("tokenizer")] = B.default("tokenizer"),
    processor: Annotated[Optional[str], _opt("processor")] = B.default("processor"),
    template: Annotated[str, _opt("template")] = B.default("template"),
    label_policy: Annotated[str, _opt("label_policy")] = B.default("label_policy"),
    system_prompt: Annotated[Optional[str], _opt("system_prompt")] = B.default("system_prompt"),
    image_root: Annotated[Optional[str], _opt("image_root")] = B.default("image_root"),
    max_length: Annotated[Optional[int], _opt("max_length")] = B.default("max_length"),
    overlong: Annotated[str, _opt("overlong")] = B.default("overlong"),
    pad_token: Annotated[Optional[str], _opt("pad_token")] = B.default("pad_token"),
    shard_rows: Annotated[int, _opt("shard_rows")] = B.default("shard_rows"),
    seed: Annotated[int, _opt("seed")] = B.default("seed"),
    image_max_side: Annotated[Optional[int], _opt("image_max_side")] = B.default("image_max_side"),
    min_image_side: Annotated[int, _opt("min_image_side")] = B.default("min_image_side"),
    max_image_pixels: Annotated[int, _opt("max_image_pixels")] = B.default("max_image_pixels"),
    image_check: Annotated[str, _opt("image_check")] = B.default("image_check"),
    fix_missing_placeholder: Annotated[bool, _opt("fix_missing_placeholder")] = B.default("fix_missing_placeholder"),
    image_size: Annotated[int, _opt("image_size")] = B.default("image_size"),
    patch_size: Annotated[int, _opt("patch_size")] = B.default("patch_size"),
    aspect: Annotated[str, _opt("aspect")] = B.default("aspect"),
    video_root: Annotated[Optional[str], _opt("video_root")] = B.default("video_root"),
    video_frames: Annotated[int, _opt("video_frames")] = B.default("video_frames"),
    video_fps: Annotated[Optional[float], _opt("video_fps")] = B.default("video_fps"),
    video_max_side: Annotated[Optional[int], _opt("video_max_side")] = B.default("video_max_side"),
    video_time_instruction: Annotated[bool, _opt("video_time_instruction")] = B.default("video_time_instruction"),
    video_timeout_s: Annotated[float, _opt("video_timeout_s")] = B.default("video_timeout_s"),
    video_max_duration_s: Annotated[float, _opt("video_max_duration_s")] = B.default("video_max_duration_s"),
    near_duplicates: Annotated[str, _opt("near_duplicates")] = B.default("near_duplicates"),
    dup_image_bits: Annotated[int, _opt("dup_image_bits")] = B.default("dup_image_bits"),
    dup_text_jaccard: Annotated[float, _opt("dup_text_jaccard")] = B.default("dup_text_jaccard"),
    eval_set: Annotated[list[str], _opt("eval_set")] = B.default("eval_set"),
    eval_image_root: Annotated[Optional[str], _opt("eval_image_root")] = B.default("eval_image_root"),
    contamination: Annotated[str, _opt("contamination")] = B.default("contamination"),
    eval_text_jaccard: Annotated[float, _opt("eval_text_jaccard")] = B.default("eval_text_jaccard"),
    eval_min_chars: Annotated[int, _opt("eval_min_chars")] = B.default("eval_min_chars"),
    engine: Annotated[str, _opt("engine")] = B.default("engine"),
    workers: Annotated[Optional[int], _opt("workers")] = B.default("workers"),
    ray_address: Annotated[Optional[str], _opt("ray_address")] = B.default("ray_address"),
    overwrite: Annotated[bool, _opt("overwrite")] = B.default("overwrite"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Validate, render, tokenize and shard LLaVA-format records.

    Every record ends up either as a row in shards/*.arrow or as a line of quarantine.jsonl with a reason.
    A killed build resumes when run again with the same arguments; manifest.json appears last.
    """
    from parsit_data.build import build

    cfg = BuildConfig.parse(
        inputs=[str(p) for p in inputs], out=str(out), tokenizer=tokenizer, processor=processor, template=template,
        label_policy=label_policy, system_prompt=system_prompt,
        image_root=str(image_root) if image_root else None, max_length=max_length, overlong=overlong,
        pad_token=pad_token, shard_rows=shard_rows, seed=seed, image_max_side=image_max_side,
        min_image_side=min_image_side, max_image_pixels=max_image_pixels, image_check=image_check,
        fix_missing_placeholder=fix_missing_placeholder, image_size=image_size, patch_size=patch_size,
        aspect=aspect, video_root=video_root, video_frames=video_frames, video_fps=video_fps,
        video_max_side=video_max_side, video_time_instruction=video_time_instruction,
        video_timeout_s=video_timeout_s, video_max_duration_s=video_max_duration_s, near_duplicates=near_duplicates,
        dup_image_bits=dup_image_bits,
        dup_text_jaccard=dup_text_jaccard, eval_set=list(eval_set), eval_image_root=eval_image_root,
        contamination=contamination, eval_text_jaccard=eval_text_jaccard, eval_min_chars=eval_min_chars,
        engine=engine, workers=workers, ray_address=ray_address, overwrite=overwrite,
        progress=not quiet,
    )

    from parsit_data.progress import BuildProgress

    prog = BuildProgress()
    last = [0.0]

    def progress(r) -> None:
        prog.update(r)
        # At most one line a second: a long build prints a steady trickle, also in `ray job logs`.
        if not quiet and time.monotonic() - last[0] >= PROGRESS_EVERY_S:
            last[0] = time.monotonic()
            console.print(f"  {prog.line()}", highlight=False, soft_wrap=True)

    def start(specs, engine) -> None:
        prog.start(specs)
        if not quiet:
            line = engine.name if cfg.engine != "auto" else f"{engine.name} (auto: {engine.why})"
            console.print(f"engine: {line}", highlight=False, soft_wrap=True)

    manifest = build(cfg, on_progress=progress, on_start=start)
    if not quiet:
        console.print(f"  {prog.line()}", highlight=False, soft_wrap=True)
        from parsit_data.format.fsio import location

        _summary(location(out), manifest)


def _summary(out, manifest: Manifest) -> None:
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
    from parsit_data.format import build_files

    files = build_files(out)
    console.print(f"shards:     {files.shards} ({len(manifest.shards)} files)")
    console.print(f"quarantine: {files.quarantine}")
    if files.report_html.exists():
        console.print(f"report:     {files.report_html}")
    console.print(f"manifest:   {files.manifest}")


def register(app: typer.Typer) -> None:
    app.command("build")(build_command)
