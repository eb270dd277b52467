"""report.html's "Near duplicates and contamination" section, from the report's ``near_duplicates`` block."""

from __future__ import annotations

from html import escape

CSS = (".pair{display:grid;grid-template-columns:1fr 1fr;gap:10px;border:1px solid #ddd;border-radius:6px;"
       "padding:8px;margin:8px 0}.pair img{max-width:112px;margin-right:6px;border:1px solid #ccc}"
       ".pair pre,.diff{white-space:pre-wrap;font-size:12px;margin:4px 0}.diff del{background:#fdd}"
       ".diff ins{background:#dfd;text-decoration:none}")


def _table(headers: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _side(row: dict, title: str) -> str:
    imgs = "".join(f'<img alt="" src="{escape(t)}">' for t in row.get("thumbs", []) if t)
    return (f"<div><b>{escape(title)}</b> <code>{escape(str(row['sample_id']))}</code> ({escape(row['source'])})"
            f"<div>{imgs}</div><pre>{escape(row.get('text', ''))}</pre></div>")


def _diff(ops: list[list[str]]) -> str:
    tag = {"=": "span", "-": "del", "+": "ins"}
    return '<div class="diff">' + " ".join(f"<{tag[op]}>{escape(t)}</{tag[op]}>" for op, t in ops) + "</div>"


def render(d: dict) -> str:
    h = [f"<style>{CSS}</style>", '<section id="near-duplicates"><h2>Near duplicates and contamination</h2>']
    th = d["thresholds"]
    h.append(f"<p>{d['near_duplicate_rows']:,} of {d['rows']:,} rows ({d['rate']:.2%}) are near copies of an earlier "
             f"sample (action: <code>{escape(d['action'])}</code>; images within {th['image_bits']} bits, text "
             f"Jaccard at least {th['text_jaccard']}). Image-only matches: {d['image_only_pairs']:,} pairs; "
             f"text-only: {d['text_only_pairs']:,} pairs (reported, never dropped).</p>")
    h.append(f"<p class=muted>{escape(d['method'])}</p>")
    if d["clusters"]:
        h.append(_table(["copies of one kept sample", "clusters"], [[c["copies"], c["clusters"]] for c in d["clusters"]]))
    h.append(_table(["source", "rows", "near copies", "rate"],
                    [[escape(s["source"]), f"{s['rows']:,}", f"{s['copies']:,}", f"{s['rate']:.2%}"]
                     for s in d["per_source"]]))
    if d["between_sources"]:
        h.append(_table(["kept in source", "copy in source", "copies"],
                        [[escape(b["kept_source"]), escape(b["copy_source"]), f"{b['copies']:,}"]
                         for b in d["between_sources"]]))
    for ex in d["examples"]:
        h.append(f'<div class="pair">{_side(ex["kept"], "kept")}{_side(ex["copy"], "copy")}</div>'
                 f"<p class=muted>images {ex['image_bits']} bits apart, text Jaccard {ex['jaccard']}</p>"
                 + _diff(ex["diff"]))
    c = d.get("contamination")
    if c is not None:
        h.append(f"<h3>Benchmark contamination</h3><p>{c['rows']:,} training rows leak an eval item "
                 f"(action: <code>{escape(c['action'])}</code>).</p>")
        h.append(_table(["eval set", "items", "unreadable", "contaminated rows"],
                        [[escape(s["name"]), f"{s['items']:,}", f"{s['unreadable']:,}", f"{s['contaminated_rows']:,}"]
                         for s in c["eval_sets"]]))
        for s in c["eval_sets"]:
            for ex in s["examples"]:
                h.append(f'<div class="pair">{_side(ex, "training sample")}<div>eval set <b>{escape(ex["eval_set"])}'
                         f'</b> item <code>{escape(str(ex["item"]))}</code>: {escape(ex["via"])} '
                         f"(score {ex['score']})</div></div>")
    h.append("</section>")
    return "\n".join(h)
