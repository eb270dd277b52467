"""The report page's video section: what the build sampled from the clips it kept, and which it refused.

Only a build that saw a video has it (``Report.video``); its numbers come from the ``video_*``
distributions (one value per kept clip, from the shard's ``video_info``, ``video_frame_indices`` and
``num_video_tokens``) and from the quarantine reasons whose code starts with ``video_``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from html import escape

from parsit_data.report.html import _card, _img, _n, _pct, _quantiles, _table
from parsit_data.report.model import Report

#: The per-clip metrics, in the order of the quantile table.
VIDEO_TABLE = ["video_duration_ms", "video_fps_centi", "video_width", "video_height", "video_source_frames",
               "video_frames", "video_tokens"]


def _sampling(s: dict | None) -> str:
    """One sentence on how frames were sampled, then the manifest's video block in full."""
    if not s:
        return ('<p class="muted">The manifest records no video sampling parameters (a build without video '
                "support: every video record was refused).</p>")
    frames, fps, size = s.get("frames"), s.get("fps"), s.get("size")
    how = (f"{frames} frames uniform over each whole clip" if fps is None else
           f"one frame every 1/{fps:g} s, at most {frames} (then {frames} uniform)")
    at = (f"stored at {size['width']}x{size['height']}" if isinstance(size, dict) and "width" in size else
          f"stored with the longer side at most {s['max_side']}" if s.get("max_side") else "stored")
    rows = [[escape(k), f"<code>{escape(json.dumps(v, ensure_ascii=False))}</code>"] for k, v in s.items()]
    return (f"<p>Sampled once, at build time: {escape(how)}; a clip with fewer frames keeps all of them; frames "
            f"{escape(at)} as JPEG. Training never opens a video file.</p>"
            "<details><summary>the manifest's video block</summary>" + _table(["video", "value"], rows) + "</details>")


def render_videos(r: Report, hist: Callable[..., str]) -> str:
    """The ``videos`` section; ``hist(metric, caption)`` draws one distribution as the page does."""
    from parsit_data.report import plots  # matplotlib only when a page is drawn

    v = r.video
    h = ['<section id="videos"><h2>Videos</h2>']
    seen = v.rows + v.rejected
    h.append('<div class="cards">'
             + _card("videos kept", _n(v.rows), f"{_pct(v.rows / seen)} of videos seen" if seen else "")
             + _card("frames stored", _n(v.frames), f"{v.frames / v.rows:,.1f} per clip" if v.rows else "")
             + _card("video tokens", _n(v.tokens),
                     f"{_pct(v.tokens / r.summary.tokens)} of multimodal tokens" if r.summary.tokens else "")
             + _card("source duration", f"{v.duration_s / 3600:,.2f} h" if v.duration_s >= 3600 else
                     f"{v.duration_s:,.1f} s", "kept clips, in total")
             + _card("videos refused", _n(v.rejected), f"{len(v.rejected_by_reason)} reason(s)")
             + "</div>")
    h.append(_sampling(v.sampling))
    if v.rows:
        h.append(_quantiles(r, VIDEO_TABLE))
        grid = (hist("video_duration_ms", "the source clip's duration (video_info.duration_s)")
                + hist("video_fps_centi", "the source clip's average frame rate (variable-rate clips: their mean)"))
        if v.sizes:
            grid += _img(plots.image_sizes(v.sizes, "source clip sizes (dashed: square)"), "video sizes",
                         "each point is a 2-D size bin of the source clips; area ~ count")
        grid += (hist("video_source_frames", "frames in the source clip")
                 + hist("video_frames", "frames sampled and stored per clip (fewer when the clip is short)")
                 + hist("video_tokens", "exact visual tokens per clip (num_video_tokens), as the processor counts"))
        h.append(f'<div class="grid">{grid}</div>')
    else:
        h.append("<p>No kept row has a video.</p>")
    refused = [x for x in r.reasons if x.reason in v.rejected_by_reason]
    if refused:
        h.append("<h3>Videos refused, by reason</h3>")
        rows = []
        for x in refused:
            ex = x.example
            where = (f"<code>{escape(ex.sample_id or '(no id)')}</code> <span class=muted>{escape(ex.source)}</span>"
                     f"<br>{escape(ex.detail)}") if ex is not None else ""
            rows.append([f"<b>{escape(x.reason)}</b><br><span class=muted>{escape(x.help)}</span>", _n(x.count),
                         escape(", ".join(f"{k}: {c}" for k, c in x.by_source.items())), where])
        h.append(_table(["reason", "videos", "by source", "example (sample id, detail)"], rows, {1}))
        h.append(_img(plots.reasons(refused, "refused videos"), "videos refused by reason"))
    h.append("</section>")
    return "\n".join(h)
