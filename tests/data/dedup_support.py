"""Synthetic images for the near-duplicate tests and benchmarks/dedup.py: photos, and documents, charts
and screenshots drawn from one template each (the hard negatives: same layout, different content), with
the planted copies the tests must find (JPEG re-encode, resize, small crop)."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw

WORDS = ("total revenue margin quarter annual report figure table summary growth region sales cost profit net "
         "income balance sheet asset liability equity cash flow forecast budget variance index rate value").split()


def photo(seed: int, size=(320, 240)) -> Image.Image:
    r = random.Random(seed)
    img = Image.new("RGB", size, tuple(r.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = r.randrange(size[0]), r.randrange(size[1])
        x1, y1 = x0 + r.randrange(20, 160), y0 + r.randrange(20, 120)
        d.ellipse((x0, y0, x1, y1), fill=tuple(r.randrange(256) for _ in range(3)))
    return img


def document(seed: int, size=(300, 400)) -> Image.Image:
    """A page of one template: header bar, title, ruled body text (different words for each seed)."""
    r = random.Random(seed)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, size[0], 40), fill=(30, 60, 120))
    d.text((12, 12), " ".join(r.choice(WORDS) for _ in range(3)).upper(), fill="white")
    y = 60
    while y < size[1] - 20:
        line = " ".join(r.choice(WORDS) for _ in range(r.randrange(3, 7)))
        d.text((12, y), line, fill="black")
        y += 16
    return img


def chart(seed: int, size=(320, 240)) -> Image.Image:
    """A bar chart of one template: same axes and colours, different values."""
    r = random.Random(seed)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.line((30, 10, 30, 210), fill="black", width=2)
    d.line((30, 210, 310, 210), fill="black", width=2)
    for k in range(8):
        h = r.randrange(10, 190)
        d.rectangle((40 + k * 33, 210 - h, 62 + k * 33, 210), fill=(200, 80, 40))
    d.text((120, 220), " ".join(r.choice(WORDS) for _ in range(2)), fill="black")
    return img


def screenshot(seed: int, size=(320, 240)) -> Image.Image:
    """An app window of one template: title bar, sidebar, buttons, a list of different items."""
    r = random.Random(seed)
    img = Image.new("RGB", size, (240, 240, 240))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, size[0], 24), fill=(60, 60, 60))
    d.rectangle((0, 24, 70, size[1]), fill=(210, 215, 225))
    for k in range(r.randrange(5, 11)):
        d.rectangle((80, 32 + k * 20, 80 + r.randrange(60, 230), 46 + k * 20), fill=(255, 255, 255))
        d.text((84, 33 + k * 20), r.choice(WORDS), fill="black")
    d.rectangle((250, 210, 310, 232), fill=(40, 120, 220))
    return img


KINDS = {"photo": photo, "document": document, "chart": chart, "screenshot": screenshot}


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# The planted near copies: each takes the original and returns the copy's bytes.
def reencoded(img: Image.Image) -> bytes:
    return jpeg(img, 60)


def resized(img: Image.Image) -> bytes:
    return png(img.resize((img.width * 2 // 3, img.height * 2 // 3), Image.Resampling.BICUBIC))


def cropped(img: Image.Image, pct: int = 2) -> bytes:
    """``pct``% off every side (2%: what the tests plant; benchmarks/dedup.py measures 1 to 5%)."""
    dx, dy = img.width * pct // 100, img.height * pct // 100
    return png(img.crop((dx, dy, img.width - dx, img.height - dy)))


COPIES = {"reencode": reencoded, "resize": resized, "crop": cropped}


# ---------------------------------------------------------------------------------------------------
# A planted dataset: near copies, eval leaks and hard negatives, with the truth
# ---------------------------------------------------------------------------------------------------

import json  # noqa: E402
from pathlib import Path  # noqa: E402

QUESTIONS = ["What is the title of this page?", "Which bar is the tallest and by how much?",
             "Which menu item is selected in the sidebar?", "Describe what is shown in the picture."]


def _conv(q: str, a: str, img: bool = True) -> list[dict]:
    return [{"from": "human", "value": ("<image>\n" if img else "") + q}, {"from": "gpt", "value": a}]


def _answer(r: random.Random, n: int = 14) -> str:
    return " ".join(r.choice(WORDS) for _ in range(n)) + "."


def planted(tmp: Path, n_base: int = 24, seed: int = 0) -> dict:
    """Two sources (a.jsonl, b.jsonl), an eval set, images; returns paths and the truth.

    truth["copies"]: sample id -> id of the sample it copies (what must be found);
    truth["contaminated"]: ids of training samples that leak an eval item;
    every other sample is a hard negative or a plain distinct sample (finding it is a false positive).
    """
    r = random.Random(seed)
    root = tmp / "images"
    root.mkdir(parents=True, exist_ok=True)
    kinds = list(KINDS)
    a_recs, b_recs, copies, contaminated = [], [], {}, set()

    def save(name: str, data: bytes) -> str:
        (root / name).write_bytes(data)
        return name

    for i in range(n_base):
        kind = kinds[i % len(kinds)]
        img = KINDS[kind](1000 + i)
        q = QUESTIONS[i % len(QUESTIONS)]
        text = _conv(q, _answer(r))
        base = f"a{i}"
        a_recs.append({"id": base, "image": save(f"{base}.png", png(img)), "conversations": text})
        j = i % 6
        if j in (0, 1, 2):  # a near copy in source b: image transformed, one word of the answer changed
            how = ("reencode", "resize", "crop")[j]
            t2 = json.loads(json.dumps(text))
            words = t2[1]["value"].split(" ")
            words[len(words) // 2] = "zebra"
            t2[1]["value"] = " ".join(words)
            cid = f"b{i}-{how}"
            b_recs.append({"id": cid, "image": save(f"{cid}.img", COPIES[how](img)), "conversations": t2})
            copies[cid] = base
        elif j == 3:  # hard negative: same image, another conversation
            b_recs.append({"id": f"b{i}-sameimg", "image": save(f"b{i}.png", png(img)),
                           "conversations": _conv("Count the objects and list their colours please.", _answer(r))})
        elif j == 4:  # hard negative: same conversation, another image of the same template
            b_recs.append({"id": f"b{i}-sametext", "image": save(f"b{i}.png", png(KINDS[kind](5000 + i))),
                           "conversations": text})
        else:  # hard negative: another image of the same template, same question, other answer
            b_recs.append({"id": f"b{i}-template", "image": save(f"b{i}.png", png(KINDS[kind](7000 + i))),
                           "conversations": _conv(q, _answer(r))})
    # text-only samples: an exact-ish copy with one word changed, and a distinct one
    t = _conv("Summarise the following paragraph about the annual report in two sentences.", _answer(r, 30), False)
    a_recs.append({"id": "a-text", "conversations": t})
    t2 = json.loads(json.dumps(t))
    t2[0]["value"] = t2[0]["value"].replace("two", "three")
    b_recs.append({"id": "b-text-copy", "conversations": t2})
    copies["b-text-copy"] = "a-text"
    b_recs.append({"id": "b-text-other", "conversations": _conv("Translate this sentence into French.", _answer(r, 30),
                                                                  False)})
    # eval set: one leaked image (a re-encoded copy is in training), one leaked question, one clean item
    evroot = tmp / "eval_images"
    evroot.mkdir(exist_ok=True)
    leak_img = photo(424242)
    (evroot / "e1.png").write_bytes(png(leak_img))
    (evroot / "e3.png").write_bytes(png(chart(434343)))
    leak_q = "In the 2019 annual report, which region had the highest operating margin growth?"
    eval_items = [
        {"id": "mmb-1", "image": "e1.png", "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}]},
        {"id": "mmb-2", "question": leak_q},
        {"id": "mmb-3", "image": "e3.png", "question": "Which bar is the tallest?"},
    ]
    a_recs.append({"id": "leak-img", "image": save("leak.jpg", reencoded(leak_img)),
                   "conversations": _conv("What animal is this?", _answer(r))})
    a_recs.append({"id": "leak-q", "conversations": _conv("in the 2019 annual report, which region had the highest "
                                                          "operating margin growth", _answer(r), False)})
    contaminated.update({"leak-img", "leak-q"})
    # hard negative for contamination: the generic short question of mmb-3, on another chart
    b_recs.append({"id": "b-generic-q", "image": save("generic.png", png(chart(535353))),
                   "conversations": _conv("Which bar is the tallest?", _answer(r))})
    for name, recs in (("a.jsonl", a_recs), ("b.jsonl", b_recs)):
        (tmp / name).write_text("".join(json.dumps(x) + "\n" for x in recs))
    (tmp / "bench.jsonl").write_text("".join(json.dumps(x) + "\n" for x in eval_items))
    all_ids = [x["id"] for x in a_recs + b_recs]
    return {"inputs": [str(tmp / "a.jsonl"), str(tmp / "b.jsonl")], "image_root": str(root),
            "eval_set": str(tmp / "bench.jsonl"), "eval_image_root": str(evroot), "copies": copies,
            "contaminated": contaminated, "ids": all_ids}
