"""Benchmark items (``--eval-set``) as signatures: their images' perceptual hashes and their questions'
MinHashes.

An eval file is read like any input (JSON list, JSONL, YAML mixture) but leniently: benchmark items often
have no answer, so an item needs only its images (``image``/``images``) and its questions (the user turns of
``conversations``/``messages``, or a ``question`` field). What cannot be read (a record that is not an
object, an image that is missing or undecodable) is counted per eval set in the report, never fatal.
"""

from __future__ import annotations

import numpy as np

from parsit_data.dedup.global_pass import EvalSignatures
from parsit_data.dedup.signatures import NUM_PERM, PHASH_BYTES, VIEWS, normalize, text_signatures
from parsit_data.format.fsio import location
from parsit_data.images import ImageOptions, load_image
from parsit_data.records import Reject
from parsit_data.sources import expand_inputs, iter_source

_USER = {"human", "user"}


def _questions(value: dict) -> list[str]:
    out = []
    if isinstance(value.get("question"), str):
        out.append(value["question"])
    for turn in value.get("conversations") or value.get("messages") or []:
        if not isinstance(turn, dict) or (turn.get("from") or turn.get("role")) not in _USER:
            continue
        text = turn.get("value", turn.get("content"))
        if isinstance(text, list):  # chat content parts
            text = " ".join(p.get("text", "") for p in text if isinstance(p, dict) and p.get("type") == "text")
        if isinstance(text, str) and text.strip():
            out.append(text)
    return out


def _images(value: dict) -> list[str]:
    im = value.get("image", value.get("images"))
    if isinstance(im, str):
        return [im]
    return [x for x in im if isinstance(x, str)] if isinstance(im, list) else []


def load_eval_sets(paths: list[str], image_root: str | None, seed: int = 0) -> EvalSignatures:
    ev = EvalSignatures()
    opts = ImageOptions(root=location(image_root, "--eval-image-root") if image_root else None, signatures=True)
    hashes, img_item, qs, qchars, q_item = [], [], [], [], []
    for spec in expand_inputs(paths, seed):
        bad = 0
        for item in iter_source(spec):
            value = item.value
            if not isinstance(value, dict):
                bad += 1
                continue
            k = len(ev.items)
            questions = _questions(value)
            rels = _images(value)
            ev.items.append({"eval_set": spec.name, "item": str(value.get("id", f"{spec.name}:{item.position}")),
                             "question": questions[0][:200] if questions else "", "images": rels})
            for rel in rels:
                try:
                    hashes.append(load_image(rel, opts).phash)
                    img_item.append(k)
                except Reject:
                    bad += 1
            for q in questions:
                qs.append(q)
                qchars.append(len(normalize(q)))
                q_item.append(k)
        if bad:
            ev.problems[spec.name] = bad
    if hashes:
        ev.img_hash = np.frombuffer(b"".join(hashes), np.uint8).reshape(-1, VIEWS, PHASH_BYTES)
        ev.img_item = np.asarray(img_item, np.int64)
    if qs:
        ev.question = text_signatures(qs).reshape(-1, NUM_PERM)
        ev.question_chars = np.asarray(qchars, np.int64)
        ev.question_item = np.asarray(q_item, np.int64)
    return ev
