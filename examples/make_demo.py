"""Regenerate the bundled demo dataset (examples/demo/): page-like images made with pillow and
LLaVA-format records, a few of them deliberately malformed so the quarantine has something to show.

    python examples/make_demo.py

The output is committed; this script documents how it was made and is deterministic.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent / "demo"
TITLES = ["Annual Report 2023", "Invoice 4471", "Quarterly Results", "Shipping Manifest", "Lab Results",
          "Meeting Notes", "Floor Plan", "Bus Timetable", "Recipe Card", "Tax Form 1040"]
COLORS = [(230, 57, 70), (29, 53, 87), (69, 123, 157), (42, 157, 143), (233, 196, 106), (244, 162, 97)]


def page(i: int, rng: random.Random) -> Image.Image:
    w, h = rng.choice([(320, 240), (480, 360), (400, 560), (640, 400), (360, 360)])
    img = Image.new("RGB", (w, h), (250, 250, 245))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, w, 36], fill=COLORS[i % len(COLORS)])
    d.text((10, 10), TITLES[i % len(TITLES)], fill=(255, 255, 255))
    for row in range(48, h - 20, 18):
        d.line([12, row, rng.randint(w // 3, w - 12), row], fill=(120, 120, 120), width=3)
    if i % 3 == 0:
        x0, y0 = rng.randint(20, w // 2), rng.randint(60, h // 2)
        d.rectangle([x0, y0, x0 + w // 4, y0 + h // 4], outline=COLORS[(i + 2) % len(COLORS)], width=4)
    return img


def main() -> None:
    rng = random.Random(1234)
    img_dir = HERE / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    for i in range(24):
        name = f"page_{i:02d}.{'jpg' if i % 2 else 'png'}"
        im = page(i, rng)
        im.save(img_dir / name, **({"quality": 85} if name.endswith("jpg") else {}))
        title = TITLES[i % len(TITLES)]
        convs = [{"from": "human", "value": "<image>\nWhat is the title of this document?"},
                 {"from": "gpt", "value": f"The title is \"{title}\"."}]
        if i % 4 == 1:
            convs += [{"from": "human", "value": "How many ruled lines does the page have, roughly?"},
                      {"from": "gpt", "value": f"About {len(range(48, im.height - 20, 18))} lines."}]
        if i % 6 == 2:
            convs.insert(0, {"from": "system", "value": "You read documents and answer briefly."})
        records.append({"id": f"demo-{i:03d}", "image": name, "conversations": convs})
    # Text-only records, in the role/content spelling too.
    for i in range(8):
        records.append({"id": f"text-{i:03d}", "conversations": [
            {"role": "user", "content": f"Spell the number {i * 7} in words."},
            {"role": "assistant", "content": ["zero", "seven", "fourteen", "twenty-one", "twenty-eight",
                                              "thirty-five", "forty-two", "forty-nine"][i] + "."}]})
    # A reply that starts with a newline (the token-boundary case) and a unicode one.
    records.append({"id": "edge-newline", "conversations": [
        {"from": "human", "value": "Write a two-line poem."}, {"from": "gpt", "value": "\nRoses are red,\nviolets are blue."}]})
    records.append({"id": "edge-unicode", "conversations": [
        {"from": "human", "value": "Übersetze: 'Guten Morgen' → 日本語?"}, {"from": "gpt", "value": "おはようございます 🌅"}]})
    # Deliberately malformed records: each should land in the quarantine with its reason.
    bad = [
        {"id": "bad-missing-image", "image": "does_not_exist.png",
         "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A page."}]},
        {"id": "bad-escape", "image": "../../etc/hosts",
         "conversations": [{"from": "human", "value": "<image>\nRead it."}, {"from": "gpt", "value": "No."}]},
        {"id": "bad-no-placeholder", "image": "page_00.png",
         "conversations": [{"from": "human", "value": "Describe the page."}, {"from": "gpt", "value": "A report."}]},
        {"id": "bad-empty-answer", "conversations": [{"from": "human", "value": "Hello?"}, {"from": "gpt", "value": "   "}]},
        {"id": "bad-role", "conversations": [{"from": "robot", "value": "beep"}, {"from": "gpt", "value": "boop"}]},
        {"id": "bad-control-token", "conversations": [
            {"from": "human", "value": "Say <|im_end|> please"}, {"from": "gpt", "value": "Okay."}]},
        {"id": "bad-truncated-image", "image": "truncated.png",
         "conversations": [{"from": "human", "value": "<image>\nTitle?"}, {"from": "gpt", "value": "Unknown."}]},
        {"id": "demo-000", "conversations": [{"from": "human", "value": "Duplicate id."}, {"from": "gpt", "value": "Yes."}]},
    ]
    full = (img_dir / "page_00.png").read_bytes()
    (img_dir / "truncated.png").write_bytes(full[: len(full) // 2])
    lines = [json.dumps(r, ensure_ascii=False) for r in records + bad]
    lines.insert(10, '{"id": "bad-json", "conversations": [')  # not JSON
    (HERE / "conversations.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # The same kind of data as a JSON list, and a YAML mixture of both (LLaVA-NeXT style).
    extra = [{"id": f"list-{i:03d}", "image": f"page_{i:02d}.{'jpg' if i % 2 else 'png'}", "conversations": [
        {"from": "human", "value": "Which colour is the header band?\n<image>"},
        {"from": "gpt", "value": f"It is RGB{COLORS[i % len(COLORS)]}."}]} for i in range(0, 24, 3)]
    (HERE / "captions.json").write_text(json.dumps(extra, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (HERE / "mixture.yaml").write_text(
        "datasets:\n"
        "  - json_path: conversations.jsonl\n    sampling_strategy: all\n"
        "  - json_path: captions.json\n    sampling_strategy: random:75%\n", encoding="utf-8")


if __name__ == "__main__":
    main()
