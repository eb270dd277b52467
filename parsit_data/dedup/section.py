"""The report's near-duplicate and contamination section (``DIR/dedup.json``, shown in report.html).

Examples show both samples of a pair as they came in: text and images are read again from the sources and
the image root (not from the shards, which the pass may have rewritten), so a resumed build writes the same
section as an uninterrupted one.
"""

from __future__ import annotations

import base64
import difflib
import io
from collections import Counter

from PIL import Image

from parsit_data.dedup.global_pass import Findings, Signatures, Thresholds
from parsit_data.images import ImageOptions, load_image
from parsit_data.records import Reject

DEDUP_NAME = "dedup.json"
MAX_PAIRS = 12
THUMB = 112
METHOD = ("images: 256-bit DCT perceptual hash (64x64 grey, 16x16 lowest frequencies against their median) of the "
          "whole image and of centred crops at 97/94/91%, distance the closest pair of views, candidates from 32 "
          "tables of 3 sampled bytes; text: MinHash (128 permutations, rensa) of 5-byte "
          "shingles of the lower-cased conversation without <image>, candidates from LSH banding (32 bands x 4); "
          "every candidate verified. A copy matches an earlier sample on every image (same count, in order) and "
          "on text; clusters keep their earliest sample.")


def _thumb(item_value: dict, opts: ImageOptions) -> list[str]:
    im = item_value.get("image", item_value.get("images")) if isinstance(item_value, dict) else None
    rels = [im] if isinstance(im, str) else [x for x in im if isinstance(x, str)] if isinstance(im, list) else []
    out = []
    for rel in rels[:2]:
        try:
            data = load_image(rel, opts).data
            img = Image.open(io.BytesIO(data)).convert("RGB")
            img.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=70)
            out.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
        except (Reject, OSError):
            out.append("")
    return out


def _text(item_value) -> str:
    if not isinstance(item_value, dict):
        return ""
    turns = item_value.get("conversations") or item_value.get("messages") or []
    parts = []
    for t in turns:
        if isinstance(t, dict):
            v = t.get("value", t.get("content"))
            if isinstance(v, str):
                parts.append(v)
    return "\n".join(parts)[:600]


def _diff(a: str, b: str) -> list[list[str]]:
    """Word diff: [op, text] with op "=", "-" (only in the kept sample) or "+" (only in the copy)."""
    wa, wb = a.split(" "), b.split(" ")
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(["=", " ".join(wa[i1:i2])])
        else:
            if i2 > i1:
                out.append(["-", " ".join(wa[i1:i2])])
            if j2 > j1:
                out.append(["+", " ".join(wb[j1:j2])])
    return out


def rows_wanted(sig: Signatures, f: Findings) -> set[int]:
    """The rows whose records the examples show."""
    rows = set()
    for a, b, *_ in f.pairs[:MAX_PAIRS]:
        rows.update((a, b))
    rows.update(list(f.contaminated)[:MAX_PAIRS])
    return rows


def make_section(config, sig: Signatures, f: Findings, ev, items: dict[int, object]) -> dict:
    """``items``: row -> RawItem for :func:`rows_wanted`."""
    opts = ImageOptions(root=config.image_options.root, max_pixels=config.max_image_pixels)

    def row(r: int) -> dict:
        value = items[r].value if r in items else None
        return {"sample_id": sig.sample_id[r], "source": sig.source[r], "text": _text(value),
                "thumbs": _thumb(value, opts)}

    per_source = Counter(sig.source)
    copies = Counter(sig.source[r] for r in f.dup_of)
    between = Counter((sig.source[k], sig.source[r]) for r, k in f.dup_of.items())
    clusters = Counter(Counter(f.dup_of.values()).values())  # copies per kept sample
    examples = []
    for a, b, bits, jac in f.pairs[:MAX_PAIRS]:
        ra, rb = row(a), row(b)
        examples.append({"kept": ra, "copy": rb, "image_bits": bits, "jaccard": jac, "diff": _diff(ra["text"], rb["text"])})
    contamination = None
    if ev is not None:
        sets = []
        names = list(dict.fromkeys(it["eval_set"] for it in ev.items))
        for name in names:
            rows = [r for r, c in f.contaminated.items() if c["eval_set"] == name]
            sets.append({"name": name, "items": sum(1 for it in ev.items if it["eval_set"] == name),
                         "unreadable": ev.problems.get(name, 0), "contaminated_rows": len(rows),
                         "examples": [dict(f.contaminated[r], **row(r)) for r in rows[:MAX_PAIRS]]})
        contamination = {"action": config.contamination, "rows": len(f.contaminated), "eval_sets": sets}
    th = Thresholds.of(config)
    return {
        "action": config.near_duplicates,
        "thresholds": {"image_bits": th.image_bits, "text_jaccard": th.text_jaccard,
                       "eval_text_jaccard": th.eval_text_jaccard, "eval_min_chars": th.eval_min_chars},
        "method": METHOD,
        "rows": sig.n,
        "near_duplicate_rows": len(f.dup_of),
        "rate": round(len(f.dup_of) / sig.n, 6) if sig.n else 0.0,
        "pairs": len(f.pairs),
        "clusters": [{"copies": k, "clusters": v} for k, v in sorted(clusters.items())],
        "per_source": [{"source": s, "rows": n, "copies": copies.get(s, 0), "rate": round(copies.get(s, 0) / n, 6)}
                       for s, n in per_source.items()],
        "between_sources": [{"kept_source": a, "copy_source": b, "copies": n} for (a, b), n in sorted(between.items())],
        "image_only_pairs": f.image_only,
        "text_only_pairs": f.text_only,
        "image_only_examples": [[sig.sample_id[a], sig.sample_id[b]] for a, b in f.image_only_examples[:MAX_PAIRS]],
        "text_only_examples": [[sig.sample_id[a], sig.sample_id[b]] for a, b in f.text_only_examples[:MAX_PAIRS]],
        "examples": examples,
        "contamination": contamination,
    }
