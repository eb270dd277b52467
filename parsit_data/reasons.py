"""Quarantine reason codes: an enum of stable names (never renamed once released), one line of help each.

docs/REASONS.md lists them for users (a test keeps it complete), ``schemas/quarantine.schema.json`` has
them as the ``reason`` enum, and ``parsit-data validate`` prints the line next to each count. Add new
codes at the end; every code needs a test record that triggers it (tests/data/test_validate_reasons.py
fails otherwise).

:class:`Reason` is a ``StrEnum``: a member *is* its code string (``Reason.INVALID_JSON == "invalid_json"``),
so counters keyed by it serialize as the plain code, and ``Reason("typo")`` raises ``ValueError`` (a bug,
not bad data) wherever a rejection is made with an unknown code.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    INVALID_JSON = "invalid_json"
    NON_UTF8 = "non_utf8"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_CONVERSATIONS = "missing_conversations"
    EMPTY_CONVERSATION = "empty_conversation"
    BAD_TURN = "bad_turn"
    UNKNOWN_ROLE = "unknown_role"
    NOT_ALTERNATING = "not_alternating"
    EMPTY_TURN = "empty_turn"
    NO_ASSISTANT_TURN = "no_assistant_turn"
    IMAGE_PLACEHOLDER_MISMATCH = "image_placeholder_mismatch"
    IMAGE_MISSING = "image_missing"
    IMAGE_OUTSIDE_ROOT = "image_outside_root"
    IMAGE_UNREADABLE = "image_unreadable"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_TOO_SMALL = "image_too_small"
    VIDEO_UNSUPPORTED = "video_unsupported"
    SPECIAL_TOKEN_IN_TEXT = "special_token_in_text"
    OVERLONG = "overlong"
    DUPLICATE_ID = "duplicate_id"
    TEMPLATE_MISMATCH = "template_mismatch"
    BAD_FIELD = "bad_field"
    INVALID_UNICODE = "invalid_unicode"
    NON_STANDARD_NUMBER = "non_standard_number"
    TOKENIZER_ERROR = "tokenizer_error"
    NEAR_DUPLICATE = "near_duplicate"
    EVAL_CONTAMINATION = "eval_contamination"
    BAD_CONTENT_PART = "bad_content_part"
    UNREADABLE_INPUT = "unreadable_input"
    VIDEO_MISSING = "video_missing"
    VIDEO_OUTSIDE_ROOT = "video_outside_root"
    VIDEO_UNREADABLE = "video_unreadable"
    VIDEO_TOO_LONG = "video_too_long"
    VIDEO_TOO_LARGE = "video_too_large"
    VIDEO_TIMEOUT = "video_timeout"
    VIDEO_PLACEHOLDER_MISMATCH = "video_placeholder_mismatch"


REASONS: dict[Reason, str] = {
    Reason.INVALID_JSON: "the line or file is not valid JSON",
    Reason.NON_UTF8: "the bytes are not valid UTF-8",
    Reason.NOT_AN_OBJECT: "the record is not a JSON object",
    Reason.MISSING_CONVERSATIONS: "the record has no 'conversations' list",
    Reason.EMPTY_CONVERSATION: "'conversations' is an empty list",
    Reason.BAD_TURN: "a turn is not an object with from/value (or role/content) strings, or has extra fields",
    Reason.UNKNOWN_ROLE: "a turn's role is not human/gpt/system (or user/assistant/system)",
    Reason.NOT_ALTERNATING: "turns do not alternate user/assistant (a single leading system turn is allowed)",
    Reason.EMPTY_TURN: "a turn's text is empty or only whitespace",
    Reason.NO_ASSISTANT_TURN: "the conversation has no assistant turn, so nothing would be supervised",
    Reason.IMAGE_PLACEHOLDER_MISMATCH: "the number of <image> placeholders differs from the number of images",
    Reason.IMAGE_MISSING: "an image file does not exist under the image root",
    Reason.IMAGE_OUTSIDE_ROOT: "an image path is absolute, uses '..', or is a symlink that leads outside the image root",
    Reason.IMAGE_UNREADABLE: "an image file is empty, truncated, or not an image Pillow can decode",
    Reason.IMAGE_TOO_LARGE: "an image has more pixels than the limit (decompression bomb guard)",
    Reason.IMAGE_TOO_SMALL: "an image's shorter side is below --min-image-side",
    Reason.VIDEO_UNSUPPORTED: "the record has a video but the build has no video rule: pass --processor with a "
                              "LlavaOnevisionProcessor folder (LLaVA and LLaVA-NeXT processors take no video); "
                              "or a record with more than one video",
    Reason.SPECIAL_TOKEN_IN_TEXT: "text contains a literal control token of the template or tokenizer (e.g. <|im_start|>)",
    Reason.OVERLONG: "the multimodal length exceeds --max-length and cannot be truncated at a turn boundary",
    Reason.DUPLICATE_ID: "another record of this build already has this id",
    Reason.TEMPLATE_MISMATCH: "the chosen template cannot render the record faithfully (e.g. plain needs one "
                              "image-caption pair; a tokenizer chat template that trims or rewrites a reply)",
    Reason.BAD_FIELD: "a field has the wrong type ('image' not a string or list of strings, 'id' not a string or integer)",
    Reason.INVALID_UNICODE: "a string anywhere in the record (text, id, image path, role, a key) holds a lone UTF-16 "
                            "surrogate escape such as \\ud800, which is not a character and cannot be written as UTF-8",
    Reason.NON_STANDARD_NUMBER: "a number JSON does not allow or Python cannot hold safely: NaN, Infinity, -Infinity, "
                                "a float beyond the double range (1e400), an integer of more than 4300 digits",
    Reason.TOKENIZER_ERROR: "the tokenizer raised on this record's text (encoding it alone fails the same way)",
    Reason.NEAR_DUPLICATE: "--near-duplicates quarantine: a near copy (images and text) of an earlier sample, "
                           "which is kept (the detail names it)",
    Reason.EVAL_CONTAMINATION: "--contamination quarantine: an image or a user turn is a near copy of an --eval-set "
                               "item (the detail names the eval set and the item)",
    Reason.BAD_CONTENT_PART: "a chat 'messages' content part is not an object, has a type other than text/image/video, "
                             "or a text part without a 'text' string",
    Reason.UNREADABLE_INPUT: "the container cannot be read at this record: a corrupt Parquet row group, an Arrow file "
                             "that breaks off, a truncated tar member or header",
    Reason.VIDEO_MISSING: "a video file does not exist under the video root",
    Reason.VIDEO_OUTSIDE_ROOT: "a video path is absolute, uses '..', or is a symlink that leads outside the video root",
    Reason.VIDEO_UNREADABLE: "a video file is empty, truncated, corrupt, a still image, not a regular file (FIFO, "
                             "symlink loop), has no video track or no decoder for its codec, or its decoder crashed "
                             "or ran out of memory",
    Reason.VIDEO_TOO_LONG: "a clip lasts longer than the duration limit (checked before decoding)",
    Reason.VIDEO_TOO_LARGE: "a clip's frames have more pixels than the limit (8K), or the file is over the byte limit",
    Reason.VIDEO_TIMEOUT: "decoding one clip took longer than the per-clip time limit; the decoder was stopped",
    Reason.VIDEO_PLACEHOLDER_MISMATCH: "a record with a video lacks its one placeholder (<video>, or a single <image> "
                                       "when the record has no images), has more than one, or a <video> placeholder "
                                       "appears without a video or outside a user turn",
}

#: The codes a clip itself can be refused with (parsit_data.video raises them).
VIDEO_REASONS = frozenset({Reason.VIDEO_MISSING, Reason.VIDEO_OUTSIDE_ROOT, Reason.VIDEO_UNREADABLE,
                           Reason.VIDEO_TOO_LONG, Reason.VIDEO_TOO_LARGE, Reason.VIDEO_TIMEOUT})

assert set(REASONS) == set(Reason), "every reason code needs its line of help"


def explain(code: str) -> str:
    try:
        return REASONS[Reason(code)]
    except ValueError:
        return ""
