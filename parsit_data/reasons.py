"""Quarantine reason codes: stable names (never renamed once released), one line of help each.

docs/REASONS.md lists them for users (a test keeps it complete), and ``parsit-data validate`` prints
the line next to each count. Add new codes at the end; every code needs a test record that triggers
it (tests/data/test_validate_reasons.py fails otherwise).
"""

from __future__ import annotations

REASONS: dict[str, str] = {
    "invalid_json": "the line or file is not valid JSON",
    "non_utf8": "the bytes are not valid UTF-8",
    "not_an_object": "the record is not a JSON object",
    "missing_conversations": "the record has no 'conversations' list",
    "empty_conversation": "'conversations' is an empty list",
    "bad_turn": "a turn is not an object with from/value (or role/content) strings, or has extra fields",
    "unknown_role": "a turn's role is not human/gpt/system (or user/assistant/system)",
    "not_alternating": "turns do not alternate user/assistant (a single leading system turn is allowed)",
    "empty_turn": "a turn's text is empty or only whitespace",
    "no_assistant_turn": "the conversation has no assistant turn, so nothing would be supervised",
    "image_placeholder_mismatch": "the number of <image> placeholders differs from the number of images",
    "image_missing": "an image file does not exist under the image root",
    "image_outside_root": "an image path is absolute, uses '..', or is a symlink that leads outside the image root",
    "image_unreadable": "an image file is empty, truncated, or not an image Pillow can decode",
    "image_too_large": "an image has more pixels than the limit (decompression bomb guard)",
    "image_too_small": "an image's shorter side is below --min-image-side",
    "video_unsupported": "the record has a video; Parsit does not build video samples",
    "special_token_in_text": "text contains a literal control token of the template or tokenizer (e.g. <|im_start|>)",
    "overlong": "the multimodal length exceeds --max-length and cannot be truncated at a turn boundary",
    "duplicate_id": "another record of this build already has this id",
    "template_mismatch": "the chosen template cannot render the record faithfully (e.g. plain needs one image-caption "
                         "pair; a tokenizer chat template that trims or rewrites a reply)",
    "bad_field": "a field has the wrong type ('image' not a string or list of strings, 'id' not a string or integer)",
}


def explain(code: str) -> str:
    return REASONS.get(code, "")
