"""``parsit-data inspect``: one row decoded, supervised tokens highlighted, images with their token counts,
a video with the frames sampled from it (index in the clip and time) and its video tokens."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()

STYLES = {"supervised": "bold black on green", "text": "", "image": "bold magenta", "video": "bold magenta"}


def inspect_command(
    build_dir: Annotated[str, typer.Argument(help="A finished build: a directory or a URI (s3://bucket/build).",
                                              show_default=False)],
    index: Annotated[Optional[int], typer.Option("--index", "-n", help="Row number across all shards, "
                                                                       "in shard order (default 0).")] = None,
    sample_id: Annotated[Optional[str], typer.Option("--id", help="The row with this sample_id.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="Tokenizer folder, when the one the manifest names "
                                                          "has moved.")] = None,
    ids: Annotated[bool, typer.Option("--ids", help="Also print every position: id, label, token.")] = False,
) -> None:
    """Print one row decoded: supervised text highlighted, each image with its visual token count."""
    from parsit_data.rowview import load_row

    view = load_row(build_dir, index=index, sample_id=sample_id, tokenizer=tokenizer)
    tpl = view.template
    head = Table.grid(padding=(0, 2))
    head.add_row("row", f"{view.index}  (sample_id {view.sample_id!r}, source {view.source!r})")
    head.add_row("template", f"{tpl.get('name', '?')}, label policy {tpl.get('label_policy', '?')}")
    vid = view.video
    if vid is None:
        head.add_row("length", f"{view.length} multimodal = {view.num_tokens} text tokens "
                               f"- {len(view.num_image_tokens)} placeholder(s) + {sum(view.num_image_tokens)} visual")
    else:
        head.add_row("length", f"{view.length} multimodal = {view.num_tokens} text tokens "
                               f"- {len(view.num_image_tokens) + 1} placeholder(s) + {sum(view.num_image_tokens)} "
                               f"image + {vid['tokens']} video tokens")
    head.add_row("supervised", f"{view.supervised_tokens} tokens{'  (truncated)' if view.truncated else ''}")
    for k, im in enumerate(view.images):
        if im["grid"] is None:
            grid = "crop grid unknown"
        elif im["crops"] > 1:
            grid = f"crop grid {im['grid'][0]}x{im['grid'][1]} + base = {im['crops']} crops"
        else:
            grid = "1 crop (base only)"
        head.add_row(f"image {k + 1}", f"{im['path']}  {im['width']}x{im['height']}, {grid}, {im['tokens']} visual tokens")
    if vid is not None:
        _video_rows(head, vid)
    console.print(head)
    legend = Text("legend: ")
    legend.append("supervised", STYLES["supervised"])
    legend.append("  not supervised  ")
    legend.append("<image k: N visual tokens>", STYLES["image"])
    if vid is not None:
        legend.append("  ")
        legend.append("<video: F frames, N visual tokens>", STYLES["video"])
    console.print(legend)
    console.rule()
    body = Text()
    for p in view.pieces:
        body.append(p.text, STYLES[p.kind])
    console.print(body, highlight=False, markup=False)
    console.rule()
    if ids:
        from parsit_data.format import IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX
        from parsit_data.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer or view.tokenizer_path)
        t = Table("pos", "id", "label", "token")
        for k, (x, y) in enumerate(zip(view.input_ids, view.labels)):
            token = ("<image>" if x == IMAGE_TOKEN_INDEX else "<video>" if x == VIDEO_TOKEN_INDEX else
                     repr(tok.decode([x], skip_special_tokens=False)))
            t.add_row(str(k), str(x), str(y), token, style="green" if y != -100 else None)
        console.print(t)


def _video_rows(head: Table, vid: dict) -> None:
    """The video as the images are shown: the source clip, then each sampled frame's index and time."""
    info, frames = vid["info"], vid["frames"]
    clip = (f"{info.get('width')}x{info.get('height')}, {info.get('duration_s', 0):.2f} s at "
            f"{info.get('fps', 0):.3g} frames/s, {info.get('frames')} frames") if info else "source clip unknown"
    stored = f", stored at {vid['stored'][0]}x{vid['stored'][1]}" if vid["stored"] else ""
    head.add_row("video", f"{vid['path']}  {clip}; {len(frames)} sampled{stored}, {vid['tokens']} video tokens")
    head.add_row("frames", "  ".join(f"#{i} {t:.2f}s" for i, t in frames) or "none")


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)
