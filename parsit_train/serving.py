"""What makes a LLaVA folder servable as it was trained: processor, chat template, generation config.

``write_serving_files(folder, ...)`` adds to a Hugging Face LLaVA folder (the ``hf/`` export, or the output
of ``parsit-train assemble``) everything ``AutoProcessor.from_pretrained(folder)`` needs to reproduce the
training inputs:

- the tokenizer files (with ``<|image_pad|>``, the model's image token);
- an image processor reproducing the build's geometry and aspect mode: transformers' own
  ``LlavaImageProcessor`` (PIL backend): ``pad`` = ``do_pad`` (pad to a square with the mean colour,
  centred, then a bicubic resize to ``image_size``², LLaVA's ``expand2square``), ``square`` = the bicubic
  resize alone; mean = std = 0.5 (SigLIP) (``anyres`` is the LLaVA-NeXT / OneVision families', below);
- ``patch_size``, ``vision_feature_select_strategy="full"`` and ``num_additional_image_tokens=0``, so the
  processor expands each image token to ``(image_size // patch_size)²`` tokens, what the collator does;
- a Jinja chat template that renders exactly the build's template (ChatML ``qwen_1_5`` / ``parsit`` /
  ``qwen3``, label policy ``native``): ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per turn, the
  template's default system prompt unless the conversation starts with its own system turn, and
  ``<|im_start|>assistant\\n`` as the generation prompt; and ``qwen_1_5`` with policy ``llava-next``
  (its fixed system prompt and turn rewriting, :func:`llava_next_jinja`). Images are ``{"type": "image"}``
  content parts or the literal ``<image>`` in a string, both rendered as the image token. Other templates
  (vicuna, llama3, plain, the tokenizer's own) get no chat template; ``parsit_serving.json`` says why;
- ``generation_config.json`` stopping at the template's end-of-turn token (``<|im_end|>``).

LLaVA-NeXT and OneVision builds (``vision.family``) get their family's processor instead
(:func:`family_processor`): ``LlavaNextProcessor`` / ``LlavaOnevisionProcessor`` with the image processor
config the build stored (or, for a build without ``--processor``, the geometry's: SigLIP normalisation,
bicubic, no centre crop), the build's grid pinpoints, feature strategy, ``anyres_max_N`` and image token, so
``AutoProcessor.from_pretrained`` expands each image to the count the build stored and makes the pixels
the trainer fed (``anyres`` is reproduced: the old base-image-plus-crops scheme is gone). Loading a OneVision
processor without torchvision needs :func:`parsit_train.families.allow_onevision_processor` first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from parsit_data.errors import ParsitError

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<|image_pad|>"
IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"  # the build's video placeholder (parsit_data.format.VIDEO_PLACEHOLDER)
SERVING_FILE = "parsit_serving.json"
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
CHATML_TEMPLATES = ("qwen_1_5", "parsit", "qwen3")


def chatml_jinja(system_prompt: str | None, image_token: str = IMAGE_TOKEN, video_token: str | None = None) -> str:
    """A chat template rendering Parsit's ChatML templates (policy ``native``) character for character; with
    ``video_token`` a ``{"type": "video"}`` part or a literal ``<video>`` renders as the video token."""
    default = json.dumps(system_prompt, ensure_ascii=False) if system_prompt is not None else "none"
    tok = json.dumps(image_token)
    ph = json.dumps(IMAGE_PLACEHOLDER)
    vid = "" if video_token is None else " | replace(" + json.dumps(VIDEO_PLACEHOLDER) + ", " + json.dumps(video_token) + ")"
    vpart = "" if video_token is None else "{%- elif part.type == 'video' -%}{{- " + json.dumps(video_token) + " -}}"
    return (
        "{%- macro render(content) -%}"
        "{%- if content is string -%}{{- content | replace(" + ph + ", " + tok + ")" + vid + " -}}"
        "{%- else -%}{%- for part in content -%}"
        "{%- if part.type == 'image' -%}{{- " + tok + " -}}" + vpart +
        "{%- elif part.type == 'text' -%}{{- part.text | replace(" + ph + ", " + tok + ")" + vid + " -}}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{%- endmacro -%}"
        "{%- set default_system = " + default + " -%}"
        "{%- if messages and messages[0].role == 'system' -%}"
        "{{- '<|im_start|>system\\n' + render(messages[0].content) + '<|im_end|>\\n' -}}"
        "{%- set rest = messages[1:] -%}"
        "{%- else -%}"
        "{%- if default_system is not none -%}{{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' -}}"
        "{%- endif -%}"
        "{%- set rest = messages -%}"
        "{%- endif -%}"
        "{%- for message in rest -%}"
        "{{- '<|im_start|>' + message.role + '\\n' + render(message.content) + '<|im_end|>\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )


def llava_next_jinja(system_prompt: str, image_token: str = IMAGE_TOKEN) -> str:
    """Policy ``llava-next`` (LLaVA-NeXT's ``preprocess_qwen``): the fixed system prompt, the conversation's
    own system turns dropped, and in a conversation with images each turn holding exactly one ``<image>``
    not at its start rewritten to ``<image>\\n`` + the rest stripped, ``QA_GT_caption_based_noisy`` removed
    (``parsit_data.templates.chatml.llava_next_multimodal``)."""
    sysp = json.dumps(system_prompt, ensure_ascii=False)
    tok = json.dumps(image_token)
    ph = json.dumps(IMAGE_PLACEHOLDER)
    return (
        "{%- macro text(content) -%}"
        "{%- if content is string -%}{{- content -}}"
        "{%- else -%}{%- for part in content -%}"
        "{%- if part.type == 'image' -%}{{- " + ph + " -}}"
        "{%- elif part.type == 'text' -%}{{- part.text -}}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{%- endmacro -%}"
        "{%- set ns = namespace(images=false) -%}"
        "{%- for message in messages -%}{%- if " + ph + " in text(message.content) -%}"
        "{%- set ns.images = true -%}{%- endif -%}{%- endfor -%}"
        "{{- '<|im_start|>system\n' + " + sysp + " + '<|im_end|>\n' -}}"
        "{%- for message in messages -%}{%- if message.role != 'system' -%}"
        "{%- set t = text(message.content) -%}"
        "{%- if ns.images -%}"
        "{%- if t.count(" + ph + ") == 1 and not t.startswith(" + ph + ") -%}"
        "{%- set t = (" + ph + " + '\n' + t.replace(" + ph + ", '').strip()).strip() -%}"
        "{%- endif -%}"
        "{%- set t = t.replace('QA_GT_caption_based_noisy', '') -%}"
        "{%- endif -%}"
        "{{- '<|im_start|>' + message.role + '\n' + t.replace(" + ph + ", " + tok + ") + '<|im_end|>\n' -}}"
        "{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
    )


def chat_template_for(template: dict, image_token: str = IMAGE_TOKEN, video_token: str | None = None
                      ) -> tuple[str | None, str]:
    """(Jinja source or None, a sentence saying what is reproduced) for a manifest's ``template`` block."""
    name = template.get("name")
    policy = template.get("label_policy", "native")
    if name in CHATML_TEMPLATES and policy == "native":
        return (chatml_jinja(template.get("system_prompt"), image_token, video_token),
                f"chat template {name!r} reproduced exactly")
    if name == "qwen_1_5" and policy == "llava-next":
        return (llava_next_jinja(template.get("system_prompt") or "You are a helpful assistant.", image_token),
                "chat template qwen_1_5 with label policy llava-next (LLaVA-NeXT preprocess_qwen) reproduced")
    return None, (f"no chat template: the build's template {name!r} with label policy {policy!r} is not "
                  "reproduced by the export (the ChatML templates qwen_1_5, parsit, qwen3 with policy native, and "
                  "qwen_1_5 with llava-next, are)")


def image_processor_for(vision: dict):
    """(transformers image processor or None, a sentence) reproducing the build's pixels."""
    from transformers.image_utils import PILImageResampling
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    aspect = vision.get("aspect", "pad")
    size = int(vision["image_size"])
    if aspect == "anyres":  # a build of the family era is llava_next / llava_onevision (family_processor)
        raise ParsitError("this build counted 'anyres' images with Parsit's old rule (base image + grid crops), which "
                          "no model reproduces: rebuild it (parsit-data build --processor DIR, or --aspect anyres)")
    if aspect not in ("pad", "square"):
        raise ParsitError(f"unknown aspect mode {aspect!r} in the build's vision block")
    proc = LlavaImageProcessorPil(
        do_pad=aspect == "pad", do_resize=True, size={"height": size, "width": size}, do_center_crop=False,
        resample=PILImageResampling.BICUBIC, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(SIGLIP_MEAN), image_std=list(SIGLIP_STD), do_convert_rgb=True,
    )
    return proc, f"image processor: LlavaImageProcessor, aspect {aspect!r}, {size}x{size}"


def family_video_token(vision: dict, tok, video: dict | None = None) -> str:
    """The OneVision export's video token: the build's (its video entry, else its processor's), else Qwen's
    ``<|video_pad|>``, else ``<video>``."""
    token = (video or {}).get("video_token") or ((vision or {}).get("processor") or {}).get("video_token") or "<|video_pad|>"
    if tok.convert_tokens_to_ids(token) in (None, tok.unk_token_id):
        token = "<video>"
    return token


def family_processor(vision: dict, tok, chat: str | None, image_token: str, video: dict | None = None):
    """(processor, sentence) of a LLaVA-NeXT / OneVision build: transformers' own processor class, configured
    exactly as the build counted (the trainer's pixels come from the same image processor)."""
    from transformers import LlavaNextProcessor, LlavaOnevisionProcessor

    from parsit_train.families import allow_onevision_processor, describe, geometry_of, image_processor

    g = geometry_of(vision)
    ip = image_processor(g)
    if g.family == "llava_next":
        proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=g.patch_size,
                                  vision_feature_select_strategy=g.vision_feature_select_strategy, chat_template=chat,
                                  image_token=image_token, num_additional_image_tokens=g.num_additional_image_tokens)
    else:
        from parsit_train.video_serving import video_processor_for

        allow_onevision_processor()
        video_token = family_video_token(vision, tok, video)
        proc = LlavaOnevisionProcessor(image_processor=ip, tokenizer=tok, video_processor=video_processor_for(video),
                                       num_image_tokens=g.tokens_per_crop,
                                       vision_feature_select_strategy=g.vision_feature_select_strategy,
                                       chat_template=chat, image_token=image_token, video_token=video_token,
                                       vision_aspect_ratio=g.vision_aspect_ratio)
    return proc, f"image processor: {type(proc).__name__} ({describe(g)})"


def write_serving_files(out: Path, tokenizer_dir: Path, vision: dict, template: dict, image_token_id: int,
                        patch_size: int | None = None, video: dict | None = None) -> dict:
    """Processor, chat template and generation config into ``out``; returns what was written (also saved
    as ``parsit_serving.json``)."""
    from transformers import AutoTokenizer, GenerationConfig, LlavaProcessor

    out = Path(out)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    family = (vision or {}).get("family") or "llava"
    token = IMAGE_TOKEN
    from_processor = family != "llava" or bool(vision.get("processor"))  # a build made with --processor
    if from_processor and vision.get("image_token") and tok.convert_tokens_to_ids(vision["image_token"]) == image_token_id:
        token = vision["image_token"]  # the processor's own placeholder (e.g. <image> of llava-hf models)
    if tok.convert_tokens_to_ids(token) != image_token_id:
        raise ParsitError(f"the tokenizer's {token} is id {tok.convert_tokens_to_ids(token)}, the model's "
                          f"image token id is {image_token_id}: they must be the same token")
    onevision = family == "llava_onevision"
    chat, chat_note = chat_template_for(template, token, family_video_token(vision, tok, video) if onevision else None)
    if family != "llava":
        processor, image_note = family_processor(vision, tok, chat, token, video)
        image_proc = None
    elif vision.get("image_processor"):  # a LlavaProcessor folder's build: its own image processor and counts
        from parsit_train.families import describe, geometry_of, image_processor

        g = geometry_of(vision)
        processor = LlavaProcessor(image_processor=image_processor(g), tokenizer=tok, patch_size=g.patch_size,
                                   vision_feature_select_strategy=g.vision_feature_select_strategy, chat_template=chat,
                                   image_token=token, num_additional_image_tokens=g.num_additional_image_tokens)
        image_proc, image_note = None, f"image processor: {type(processor.image_processor).__name__} ({describe(g)})"
    else:
        processor = None
        image_proc, image_note = image_processor_for(vision)
    patch = int(patch_size or vision["patch_size"])
    if chat is not None:
        tok.chat_template = chat
    if image_proc is not None:
        processor = LlavaProcessor(image_processor=image_proc, tokenizer=tok, patch_size=patch,
                                   vision_feature_select_strategy="full", chat_template=chat,
                                   image_token=IMAGE_TOKEN, num_additional_image_tokens=0)
        processor.save_pretrained(str(out))
    elif processor is not None:
        processor.save_pretrained(str(out))
    else:
        tok.save_pretrained(str(out))
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    gen = GenerationConfig(eos_token_id=eot, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eot)
    gen.save_pretrained(str(out))
    note = {"format": "parsit.serving.v1", "image_token": token, "image_token_id": image_token_id,
            "family": family, "tokens_per_image": (int(vision["image_size"]) // patch) ** 2, "vision": vision,
            "template": {k: template.get(k) for k in ("name", "system_prompt", "label_policy")},
            "chat_template": chat_note, "image_processor": image_note, "eos_token": "<|im_end|>",
            "video": video}
    (out / SERVING_FILE).write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
    for msg in (chat_note, image_note):
        if msg.startswith("no "):
            log.warning("%s: %s", out, msg)
    return note
