"""One normaliser from the record spellings to the one typed record (:class:`~parsit_data.records.InputRecord`).

Detected per record, no flag: LLaVA ``conversations`` (``from``/``value``) and ``role``/``content``
strings pass through; turns whose contents are lists of parts (chat ``messages``, or the same turns under
``conversations``) are rewritten to what the LLaVA spelling of the same turn means (docs/FORMATS.md):

- ``{"type": "image"}`` (or ``{"type": "image", "image": ref}``) becomes ``<image>\\n``;
- ``{"type": "text", "text": s}`` becomes ``s``, as written;
- ``{"type": "video"}`` (or ``{"type": "video", "video": ref}``) becomes ``<video>\n``; any other part
  ``bad_content_part``.

The video comes from the part itself, or from the record's ``videos`` (or ``video``) list; a record holds at
most one video (more is ``video_unsupported``) and it ends up as the record's ``video`` path.

Images come from the record's ``images`` (or ``image``) list in part order, or from the parts
themselves (``"image": ref``); both at once, or a text part holding a literal ``<image>`` beside image
parts, is ``image_placeholder_mismatch``. Embedded images (:class:`EmbeddedImage`) are replaced by
their names for the schema check and come back, in order, as the record's image references.
"""

from __future__ import annotations

from typing import Any

from parsit_data.format import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from parsit_data.records import Reject
from parsit_data.sources.raw import EmbeddedImage

_PART_IMAGE_KEYS = ("image", "path", "url")


def _parts_text(parts: list, t: int, refs: list, vrefs: list) -> str:
    out: list[str] = []
    for p, part in enumerate(parts):
        if not isinstance(part, dict):
            raise Reject("bad_content_part", f"turn {t} part {p} is a {type(part).__name__}, expected an object "
                                             "with a 'type'")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise Reject("bad_content_part", f"turn {t} part {p}: a text part needs a 'text' string")
            if IMAGE_PLACEHOLDER in text:
                raise Reject("image_placeholder_mismatch", f"turn {t} part {p}: a text part holds a literal "
                                                           f"{IMAGE_PLACEHOLDER}; with content parts an image is "
                                                           "an {\"type\": \"image\"} part")
            out.append(text)
        elif kind == "image":
            ref = next((part[k] for k in _PART_IMAGE_KEYS if part.get(k) is not None), None)
            if ref is not None:
                refs.append(ref)
            out.append(IMAGE_PLACEHOLDER + "\n")
        elif kind == "video":
            ref = next((part[k] for k in ("video", "path", "url") if part.get(k) is not None), None)
            vrefs.append(ref)
            out.append(VIDEO_PLACEHOLDER + "\n")
        else:
            raise Reject("bad_content_part", f"turn {t} part {p} has type {kind!r}: parts are text, image "
                                             "(or video)")
    return "".join(out)


def _has_parts(turns: list) -> bool:
    """Whether a turn's content is a list of parts (a plain loop: this runs for every record)."""
    for t in turns:
        if type(t) is dict and type(t.get("content")) is list:
            return True
    return False


def normalize(value: dict) -> tuple[dict, list[EmbeddedImage | None]]:
    """The record in a spelling :class:`InputRecord` validates, and the embedded image at each position
    of its image list (None where the entry is a path)."""
    key = "conversations" if "conversations" in value else "messages"  # the list InputRecord reads
    turns = value.get(key)
    if type(turns) is list and _has_parts(turns):
        refs: list = []
        vrefs: list = []
        new_turns = []
        for t, turn in enumerate(turns):
            if isinstance(turn, dict) and isinstance(turn.get("content"), list):
                turn = {**turn, "content": _parts_text(turn["content"], t, refs, vrefs)}
            new_turns.append(turn)
        value = {k: v for k, v in value.items() if k != key}
        value["conversations"] = new_turns
        if vrefs:
            value = _video_of_parts(value, vrefs)
        if refs:
            given = value.get("images", value.get("image"))
            if given not in (None, []):
                raise Reject("image_placeholder_mismatch", "images are given both in the content parts and in "
                                                           "the record's 'images': use one")
            value.pop("image", None)
            value["images"] = refs
    if "videos" in value and "video" not in value:  # the plural spelling (a list of one clip)
        value = _video_of_list(value)
    field = "images" if "images" in value else "image"
    imgs = value.get(field)
    if isinstance(imgs, EmbeddedImage):
        return {**value, field: imgs.where}, [imgs]
    if isinstance(imgs, list) and any(isinstance(x, EmbeddedImage) for x in imgs):
        return ({**value, field: [x.where if isinstance(x, EmbeddedImage) else x for x in imgs]},
                [x if isinstance(x, EmbeddedImage) else None for x in imgs])
    return value, []


def _video_of_parts(value: dict, vrefs: list) -> dict:
    """The record's one ``video`` path, from its video parts or its ``videos`` / ``video`` list."""
    given = value.pop("videos", None) if "videos" in value else value.pop("video", None)
    named = [r for r in vrefs if r is not None]
    if named and given not in (None, []):
        raise Reject("video_placeholder_mismatch", "videos are given both in the content parts and in the record's "
                                                   "'videos': use one")
    refs = named or ([given] if isinstance(given, str) else given if isinstance(given, list) else [])
    if len(vrefs) > 1 or len(refs) > 1:
        raise Reject("video_unsupported", f"the record has {max(len(vrefs), len(refs))} videos; a record holds at most "
                                          "one (LLaVA-OneVision's training data has one)")
    if len(refs) != len(vrefs) or (named and len(named) != len(vrefs)):
        raise Reject("video_placeholder_mismatch", f"{len(vrefs)} video part(s) but {len(refs)} video(s) named")
    return {**value, "video": refs[0]}


def _video_of_list(value: dict) -> dict:
    videos = value["videos"]
    rest = {k: v for k, v in value.items() if k != "videos"}
    if videos is None or videos == []:
        return rest
    if isinstance(videos, list) and len(videos) > 1:
        raise Reject("video_unsupported", f"the record has {len(videos)} videos; a record holds at most one")
    return {**rest, "video": videos[0] if isinstance(videos, list) else videos}  # a wrong type: bad_field later


def with_embedded(paths: list[str], embedded: list[EmbeddedImage | None]) -> list[Any]:
    """The record's image references: each embedded image back in its place, paths elsewhere."""
    if not embedded:
        return paths
    return [e if e is not None else p for p, e in zip(paths, embedded)]
