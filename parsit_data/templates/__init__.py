"""Conversation templates and label policies: a record becomes typed segments with ``supervised`` flags.

Templates: ``qwen_1_5``, ``parsit``, ``qwen3`` (ChatML), ``plain`` (pretraining captions), ``llava_v1``
(vicuna), ``llama3``, and ``tokenizer`` (the tokenizer's own Jinja chat template). Label policies:
``native`` (every template) and ``llava-next`` (``qwen_1_5``: LLaVA-NeXT's ``preprocess_qwen`` id for id).
docs/TEMPLATES.md shows each one with its supervised parts marked.

This package holds templates only: the interface and segments (:mod:`.base`), the templates
(:mod:`.chatml`, :mod:`.llava`, :mod:`.jinja`) and the name registry (:mod:`.registry`,
:func:`get_template`). Segments become ids in :mod:`parsit_data.encode`; the check of a template against
a tokenizer and the manifest's mask report are :mod:`parsit_data.mask_report`.
"""

from parsit_data.templates.base import (LABEL_POLICIES, LLAVA_NEXT, NATIVE, TEMPLATE_MISMATCH, LabelPolicy, Segment,
                                        Template, TemplateName, example_record, rendered_text)
from parsit_data.templates.chatml import DEFAULT_SYSTEM, LLAVA_NEXT_SYSTEM, PARSIT_SYSTEM, ChatMLTemplate
from parsit_data.templates.registry import TEMPLATE_NAMES, TEMPLATES, get_template

__all__ = [
    "LABEL_POLICIES", "LLAVA_NEXT", "NATIVE", "TEMPLATE_MISMATCH", "TEMPLATES", "TEMPLATE_NAMES", "LabelPolicy",
    "Segment", "Template", "TemplateName", "ChatMLTemplate", "DEFAULT_SYSTEM", "PARSIT_SYSTEM",
    "LLAVA_NEXT_SYSTEM", "example_record", "get_template", "rendered_text",
]
