"""``report.html``: one self-contained page rendered from the :class:`Report` model.

Self-contained means it opens offline: CSS inline, plots inline as base64 SVG ``data:`` URIs, no
script, no font, no URL outside the page. Order follows what an engineer asks first: can I train on
this (verdict and checks), then sources, rejections, lengths, images, duplicates, mixture, and what
exactly is supervised.
"""

from __future__ import annotations

import base64
import json
from html import escape

from parsit_data.report.model import Distribution, MaskedExample, Report

CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2329;margin:0;background:#f4f5f7}
main{max-width:1220px;margin:0 auto;padding:20px 28px 40px}
h1{font-size:24px;margin:0 0 2px}h2{font-size:19px;margin:30px 0 10px;padding-bottom:4px;border-bottom:2px solid #d9dde3}
h3{font-size:15px;margin:16px 0 6px}.sub{color:#5a6570;margin:0 0 10px;font-size:13px}
nav a{color:#3b6ea8;margin-right:14px;text-decoration:none;font-size:13px}
.verdict{border-radius:8px;padding:14px 18px;margin:14px 0;color:#fff;font-size:17px}
.verdict b{font-size:22px;margin-right:12px;letter-spacing:.5px}.verdict ul{margin:6px 0 0;padding-left:20px;font-size:14px}
.v-go{background:#2e7d4f}.v-review{background:#c27c0e}.v-no-go{background:#b3362f}
.cards{display:grid;grid-template-columns:repeat(5,1fr);gap:10px;margin:10px 0}
.card{background:#fff;border:1px solid #dfe3e8;border-radius:6px;padding:10px 12px}
.card .k{font-size:12px;color:#5a6570}.card .v{font-size:21px;font-weight:600}.card .d{font-size:12px;color:#5a6570}
table{border-collapse:collapse;background:#fff;margin:6px 0 10px;width:100%;font-size:13px}
td .muted{word-break:break-all}
th,td{border:1px solid #dfe3e8;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.pill{display:inline-block;border-radius:10px;padding:0 9px;font-size:12px;font-weight:700;color:#fff}
.s-ok{background:#2e7d4f}.s-warn{background:#c27c0e}.s-fail{background:#b3362f}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}
figure{margin:0;background:#fff;border:1px solid #dfe3e8;border-radius:6px;padding:8px}
figure img{max-width:100%;display:block}figcaption{font-size:12px;color:#5a6570;margin-top:4px}
pre.example{background:#fff;border:1px solid #dfe3e8;border-radius:6px;padding:10px;white-space:pre-wrap;
 word-break:break-word;font:12.5px/1.5 "DejaVu Sans Mono",Menlo,Consolas,monospace}
.sup{background:#c8efd2;border-bottom:2px solid #2e7d4f}.img{background:#dde7f5;border-radius:3px;padding:0 2px}
.legend span{margin-right:14px;font-size:12px}code{font-size:12.5px;background:#eef1f4;padding:0 3px;border-radius:3px}
.muted{color:#5a6570;font-size:12.5px}details{margin:6px 0}summary{cursor:pointer;color:#3b6ea8}
"""

SECTIONS = [("summary", "Summary"), ("sources", "Sources"), ("reasons", "Quarantine reasons"),
            ("lengths", "Lengths and supervision"), ("images", "Images"), ("duplicates", "Duplicates"),
            ("mixture", "Mixture"), ("template", "Template and labels"), ("tokenizer", "Tokenizer and vision")]

NEAR_DUPLICATES = ("near-duplicates", "Near duplicates and contamination")
VIDEOS = ("videos", "Videos")

#: Metrics binned in one unit and shown in another: metric -> (factor, label as shown).
DISPLAY = {"video_duration_ms": (0.001, "source clip duration (s)"),
           "video_fps_centi": (0.01, "source frame rate (frames/s)")}


def sections(near_duplicates: bool, video: bool = False) -> list[tuple[str, str]]:
    """The page's sections in order: with the videos section when the build saw videos, and the
    near-duplicates section when it ran the global pass."""
    out = list(SECTIONS)
    if video:
        k = [key for key, _ in out].index("images") + 1
        out = out[:k] + [VIDEOS] + out[k:]
    if near_duplicates:
        k = [key for key, _ in out].index("duplicates") + 1
        out = out[:k] + [NEAR_DUPLICATES] + out[k:]
    return out


def _n(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.{1 if abs(v) >= 100 else 3}f}".rstrip("0").rstrip(".")
    return f"{int(v):,}"


def _pct(v: float) -> str:
    return f"{v * 100:.1f}%"


def _img(svg: bytes, alt: str, caption: str = "") -> str:
    b64 = base64.b64encode(svg).decode("ascii")
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{escape(alt)}" src="data:image/svg+xml;base64,{b64}">{cap}</figure>'


def _table(headers: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    th = "".join(f'<th class="{"n" if i in numeric else ""}">{escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="{"n" if i in numeric else ""}">{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _card(k: str, v: str, d: str = "") -> str:
    return f'<div class="card"><div class="k">{escape(k)}</div><div class="v">{v}</div><div class="d">{d}</div></div>'


def _quantile_rows(dists: dict[str, Distribution], metrics: list[str], name: str | None = None) -> list[list]:
    rows = []
    for m in metrics:
        d = dists.get(m)
        if d is None:
            continue
        q = d.quantiles
        scale, label = DISPLAY.get(m, (1.0, d.label))
        fmt = _pct if d.scheme == "share" else (lambda v: _n(round(v * scale, 3))) if scale != 1.0 else _n
        first = [escape(name)] if name is not None else []
        rows.append(first + [escape(label), _n(q.n), *(fmt(v) if v is not None else "–" for v in (
            q.mean, q.p50, q.p90, q.p99, q.max))])
    return rows


def _lengths(d: Distribution | None) -> str:
    return f"{_n(d.quantiles.p50)} / {_n(d.quantiles.p99)}" if d is not None and d.quantiles.n else "–"


def _quantiles(r: Report, metrics: list[str]) -> str:
    head = ["metric", "count", "mean", "p50", "p90", "p99", "max"]
    out = _table(head, _quantile_rows(r.overall, metrics), set(range(1, 7)))
    if len(r.sources) > 1:
        rows = []
        for s in r.sources:
            rows += _quantile_rows(s.distributions, metrics, s.name)
        out += "<details><summary>per source</summary>" + _table(["source"] + head, rows, set(range(2, 8))) + "</details>"
    return out


def _spans_html(spans) -> str:
    parts = []
    for s in spans:
        text, sup = (s.text, s.supervised) if hasattr(s, "text") else (s.get("text", ""), s.get("supervised"))
        t = escape(text).replace("&lt;image&gt;", '<span class="img">&lt;image&gt;</span>').replace(
            "&lt;video&gt;", '<span class="img">&lt;video&gt;</span>')
        parts.append(f'<span class="sup">{t}</span>' if sup else t)
    return '<pre class="example">' + "".join(parts) + "</pre>"


def _example(ex: MaskedExample) -> str:
    n_sup = sum(len(s.text) for s in ex.spans if s.supervised)
    return (f'<p class="muted">source <b>{escape(ex.source)}</b>, sample <code>{escape(ex.sample_id)}</code>, '
            f"{ex.images} image(s), multimodal length {ex.length:,}; {n_sup} supervised characters</p>"
            + _spans_html(ex.spans))


def _marked_spans(text: str, open_mark: str = "⟦", close_mark: str = "⟧") -> list[dict]:
    """Text with supervised runs between marks (the templates' mask report) -> spans."""
    spans, pos = [], 0
    while pos < len(text):
        i = text.find(open_mark, pos)
        j = text.find(close_mark, i + 1) if i >= 0 else -1
        if i < 0 or j < 0:
            spans.append({"text": text[pos:], "supervised": False})
            break
        if i > pos:
            spans.append({"text": text[pos:i], "supervised": False})
        spans.append({"text": text[i + len(open_mark):j], "supervised": True})
        pos = j + len(close_mark)
    return spans


def _manifest_example(v) -> str:
    if isinstance(v, dict) and isinstance(v.get("rendered"), str):  # {"record", "rendered" with ⟦ ⟧, counts}
        counts = ", ".join(f"{k.replace('_', ' ')} {v[k]:,}" for k in ("tokens", "supervised_tokens")
                           if isinstance(v.get(k), int))
        rec = ""
        if v.get("record") is not None:
            rec = ("<details><summary>the example record</summary><pre class=\"example\">"
                   + escape(json.dumps(v["record"], indent=1, ensure_ascii=False)) + "</pre></details>")
        return (f'<p class="muted">{escape(counts)}</p>' if counts else "") + _spans_html(
            _marked_spans(v["rendered"])) + rec
    if isinstance(v, str):
        return _spans_html(_marked_spans(v))
    if isinstance(v, dict) and isinstance(v.get("spans"), list):
        v = v["spans"]
    if isinstance(v, list) and all(isinstance(x, dict) and "text" in x for x in v):
        return _spans_html(v)
    return f'<pre class="example">{escape(json.dumps(v, indent=2, ensure_ascii=False))}</pre>'


def render_html(r: Report, title: str = "") -> str:
    from parsit_data.report import plots  # matplotlib only when a page is drawn

    s = r.summary
    h: list[str] = []
    add = h.append
    add(f"<h1>Parsit data quality report</h1><p class=\"sub\">{escape(title)} · parsit {escape(r.parsit_version)} · "
        f"format v{r.format_version} · config <code>{escape(r.config_hash[:16])}</code> · template "
        f"<code>{escape(r.template.name)}</code> / <code>{escape(r.template.label_policy)}</code> · tokenizer pad "
        f"<code>{escape(str(r.tokenizer.get('pad_token')))}</code></p>")
    add("<nav>" + "".join(f'<a href="#{k}">{escape(v)}</a>'
                          for k, v in sections(r.near_duplicates is not None, r.video is not None)) + "</nav>")

    # Summary
    add('<section id="summary"><h2>Summary</h2>')
    bad = [c for c in r.checks if c.status != "ok"]
    word = {"go": "GO", "review": "REVIEW", "no-go": "NO-GO"}[s.verdict]
    what = {"go": "every check passed", "review": "usable, but read the warnings below",
            "no-go": "do not train on this build before fixing the failures below"}[s.verdict]
    items = "".join(f"<li>{escape(c.name)}: {escape(c.value)}</li>" for c in bad)
    add(f'<div class="verdict v-{s.verdict}"><b>{word}</b>{escape(what)}' + (f"<ul>{items}</ul>" if items else "")
        + "</div>")
    add('<div class="cards">'
        + _card("records read", _n(s.read), f"{s.sources} source(s)")
        + _card("rows kept", _n(s.kept), _pct(s.kept / s.read) if s.read else "")
        + _card("quarantined", _n(s.quarantined), _pct(s.quarantine_rate))
        + _card("over --max-length", _n(s.over_max_length),
                f"{s.truncated:,} truncated, {s.overlong_dropped:,} dropped" if s.max_length else "no --max-length")
        + _card("exact duplicates", _n(s.duplicate_rows), "extra copies")
        + _card("multimodal tokens", _n(s.tokens), f"{s.text_tokens:,} text")
        + _card("supervised tokens", _n(s.supervised_tokens),
                _pct(s.supervised_tokens / s.text_tokens) + " of text" if s.text_tokens else "")
        + _card("images", _n(s.images), f"{r.vision.get('aspect', '')}, {r.vision.get('tokens_per_image', '')} tok/crop")
        + _card("shards", _n(s.shards), f"{s.shard_bytes / 1e6:,.1f} MB")
        + _card("zero-supervised rows", _n(s.zero_supervised_rows), "must be 0")
        + "</div>")
    add(_table(["", "check", "value", "meaning"],
               [[f'<span class="pill s-{c.status}">{c.status.upper()}</span>', escape(c.name), escape(c.value),
                 escape(c.message)] for c in r.checks]))
    add("</section>")

    # Sources
    add('<section id="sources"><h2>Sources</h2>')
    rows = [[f"<b>{escape(x.name)}</b><br><span class=muted>{escape(x.path)}</span>", escape(x.format),
             escape(x.sampling), _n(x.read),
             _n(x.kept), f"{_n(x.quarantined)} ({_pct(x.quarantine_rate)})", _n(x.truncated), _n(x.overlong_dropped),
             _n(x.duplicate_rows), _n(x.tokens), _n(x.supervised_tokens), _n(x.images),
             _lengths(x.distributions.get("length"))] for x in r.sources]
    rows.append(["<b>total</b>", "", "", _n(s.read), _n(s.kept), f"{_n(s.quarantined)} ({_pct(s.quarantine_rate)})",
                 _n(s.truncated), _n(s.overlong_dropped), _n(s.duplicate_rows), _n(s.tokens), _n(s.supervised_tokens),
                 _n(s.images), _lengths(r.overall.get("length"))])
    add(_table(["source", "format", "sampling", "read", "kept", "quarantined", "truncated", "overlong", "duplicates",
                "tokens", "supervised", "images", "length p50 / p99"], rows, set(range(3, 13))))
    add("</section>")

    # Reasons
    add('<section id="reasons"><h2>Quarantine reasons</h2>')
    if r.reasons:
        rows = []
        for x in r.reasons:
            ex = x.example
            where = ""
            if ex is not None:
                loc = f"line {ex.line}" if ex.line is not None else f"index {ex.index}" if ex.index is not None else ""
                where = (f"<code>{escape(ex.sample_id or '(no id)')}</code> <span class=muted>{escape(ex.source)} "
                         f"{loc}</span><br>{escape(ex.detail)}")
            rows.append([f"<b>{escape(x.reason)}</b><br><span class=muted>{escape(x.help)}</span>", _n(x.count),
                         escape(", ".join(f"{k}: {v}" for k, v in x.by_source.items())), where])
        add(_table(["reason", "count", "by source", "example (sample id, where, detail)"], rows, {1}))
        add(_img(plots.reasons(r.reasons), "quarantine reasons"))
        add('<p class="muted">Every rejected record is in <code>quarantine.jsonl</code> with the original record.</p>')
    else:
        add("<p>No record was quarantined.</p>")
    add("</section>")

    def hist(metric: str, caption: str = "", max_length=None) -> str:
        d = r.overall[metric]
        if not d.quantiles.n:
            return f"<figure><p class=muted>{escape(d.label)}: no data</p></figure>"
        per = {x.name: x.distributions[metric] for x in r.sources if metric in x.distributions}
        scale, label = DISPLAY.get(metric, (1.0, d.label))
        return _img(plots.histogram(per, d, max_length, scale, label), label, caption)

    # Lengths
    add('<section id="lengths"><h2>Lengths and supervision</h2>')
    add(_quantiles(r, ["length", "text_tokens", "supervised_tokens", "supervised_share", "turns"]))
    add('<div class="grid">'
        + hist("length", "multimodal length = text tokens - placeholders + visual tokens; the limit applies to it",
               s.max_length)
        + (hist("text_tokens", "tokens in input_ids (each image placeholder counts 1)") if s.images else
           "<figure><p class=muted>text tokens: the same as the multimodal length (no images)</p></figure>")
        + hist("supervised_tokens", "tokens whose label is not -100")
        + hist("supervised_share", "supervised tokens / text tokens, per sample")
        + hist("turns", "turns per sample (system turn included)") + "</div>")
    add(f'<p class="muted">{escape(r.precision)}</p></section>')

    # Images
    add('<section id="images"><h2>Images</h2>')
    add(_quantiles(r, ["images", "image_width", "image_height", "image_tokens", "image_crops"]))
    grid = hist("images", "images per sample") if s.images else "<p>No kept row has an image.</p>"
    if r.image_sizes:
        grid += _img(plots.image_sizes(r.image_sizes), "image sizes", "each point is a 2-D size bin; area ~ count")
        grid += hist("image_width") + hist("image_height")
        grid += hist("image_tokens", f"{r.vision.get('family', 'llava')}: exact per image")
        if r.overall["image_crops"].quantiles.n:
            grid += hist("image_crops")
    add(f'<div class="grid">{grid}</div>')
    if r.top_images:
        add("<h3>Images that dominate sequence length</h3>")
        add(_table(["source", "sample", "image", "size", "crop grid", "crops", "visual tokens", "share of row"],
                   [[escape(t.source), f"<code>{escape(t.sample_id)}</code>", escape(t.path),
                     f"{t.width}x{t.height}", f"{t.grid[0]}x{t.grid[1]} + base" if t.crops > 1 else "base only",
                     _n(t.crops), _n(t.tokens), f"{t.tokens / max(t.row_length, 1):.0%}"] for t in r.top_images],
                   {5, 6, 7}))
    add("</section>")

    if r.video is not None:
        from parsit_data.report.video_html import render_videos

        add(render_videos(r, hist))

    # Duplicates
    d = r.duplicates
    add('<section id="duplicates"><h2>Duplicates</h2>')
    add(f"<p><b>{d.duplicate_rows:,}</b> extra copies among {d.rows:,} kept rows ({d.distinct:,} distinct contents; "
        f"{d.groups:,} repeated contents, {d.cross_source_groups:,} of them across sources).</p>")
    if d.examples:
        add(_table(["content digest", "copies", "samples"],
                   [[f"<code>{x.digest}</code>", _n(x.count), escape(", ".join(x.samples))] for x in d.examples], {1}))
    add(f'<p class="muted">{escape(d.method)}</p></section>')

    if r.near_duplicates is not None:
        from parsit_data.dedup.html import render as render_near_duplicates

        add(render_near_duplicates(r.near_duplicates))

    # Mixture
    add('<section id="mixture"><h2>Mixture</h2>')
    add(_table(["source", "sampling", "requested (records)", "requested share", "kept", "kept share", "drift",
                "tokens share", "supervised share"],
               [[escape(m.source), escape(m.sampling), _n(m.requested_samples), _pct(m.requested_share),
                 _n(m.kept_samples), _pct(m.achieved_samples_share), f"{m.delta_samples_share * 100:+.1f} pt",
                 _pct(m.achieved_tokens_share), _pct(m.achieved_supervised_share)] for m in r.mixture],
               set(range(2, 9))))
    if len(r.mixture) > 1:  # one source: every share is 100%, nothing to draw
        add(_img(plots.mixture(r.mixture), "mixture", "requested = the records each sampling strategy selected; "
                 "achieved = after quarantine"))
    add("</section>")

    # Template
    t = r.template
    add('<section id="template"><h2>Template and labels</h2>')
    rows = [[escape(k), f"<code>{escape(json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v)}</code>"]
            for k, v in t.details.items() if k not in ("mask_report", "example", "mask_example")]
    add(_table(["template", "value"], rows))
    add('<p class="legend"><span><span class="sup">supervised</span> (label = token id)</span>'
        '<span>not supervised (label -100)</span><span><span class="img">&lt;image&gt;</span> one placeholder id '
        f"{r.image_token_index}, expanded to visual tokens by the collator</span></p>")
    if t.manifest_example is not None:
        add("<h3>The template's mask report (its example record, from the manifest)</h3>"
            + _manifest_example(t.manifest_example))
    if t.examples:
        add("<h3>A built row, decoded from its own labels</h3>" + _example(t.examples[0]))
        if len(t.examples) > 1:
            add("<details><summary>one row per source</summary>" + "".join(_example(e) for e in t.examples[1:])
                + "</details>")
    add("</section>")

    # Tokenizer and vision
    add('<section id="tokenizer"><h2>Tokenizer and vision</h2>')
    add(_table(["tokenizer", "value"], [[escape(k), f"<code>{escape(str(v))}</code>"] for k, v in r.tokenizer.items()]))
    add(_table(["vision", "value"], [[escape(k), f"<code>{escape(json.dumps(v))}</code>"] for k, v in r.vision.items()]))
    add(f"<p class=muted>image placeholder id {r.image_token_index}, ignore index {r.ignore_index}</p></section>")

    body = "\n".join(h)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Parsit report {escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body><main>\n{body}\n</main></body></html>\n")
