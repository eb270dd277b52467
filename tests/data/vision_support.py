"""Processor folders and tiny models of the three LLaVA families, made in the test (nothing downloaded).

The tokenizer is the bundled Qwen3 one with ``<image>`` (and ``<video>``) added as special tokens, as
every llava-hf tokenizer has them.

``LlavaOnevisionProcessor`` checks each constructor argument's class, and the video processor's class
lives behind torchvision, which does not load beside this venv's torch. :class:`OneVisionNoVideo` only
lets ``video_processor=None`` through that check; everything the counts depend on (``__call__``,
``replace_image_token``, ``_get_number_of_features``, the Pil image processor) is transformers' own code.
Its folder is written as the hub's llava-hf folders are laid out: ``preprocessor_config.json`` (the image
processor's ``save_pretrained``), ``processor_config.json`` (the processor's ``to_dict``) and the
tokenizer. LLaVA-NeXT folders come from ``LlavaNextProcessor.save_pretrained`` (transformers 5 nests the
image processor in ``processor_config.json``), so both layouts are read.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from parsit_data.format import resolve_tokenizer_path

#: (name, family, crop side, patch, strategy, CLS tokens): the shapes users train.
NEXT_CLIP = dict(crop=336, patch=14, strategy="default", extra=1)  # llava-v1.6 (CLIP-L/336, CLS dropped)
NEXT_SIGLIP = dict(crop=384, patch=14, strategy="full", extra=0)  # LLaVA-NeXT with SigLIP-384
OV_SIGLIP = dict(crop=384, patch=14, strategy="full", extra=0, max_crops=9)  # llava-onevision-qwen2-*-ov


def next_pinpoints(crop: int) -> list[list[int]]:
    """llava-v1.6's five grids, (height, width)."""
    return [[crop, 2 * crop], [2 * crop, crop], [2 * crop, 2 * crop], [3 * crop, crop], [crop, 3 * crop]]


def ov_pinpoints(crop: int) -> list[list[int]]:
    """OneVision's 1x1 .. 6x6 grids, (height, width)."""
    return [[crop * a, crop * b] for a in range(1, 7) for b in range(1, 7)]


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve_tokenizer_path("qwen3")))
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    return tok


def onevision_class():
    from transformers import LlavaOnevisionProcessor

    class OneVisionNoVideo(LlavaOnevisionProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return OneVisionNoVideo


def llava_next_processor(crop=336, patch=14, strategy="default", extra=1, pinpoints=None):
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    ip = LlavaNextImageProcessorPil(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop},
                                    image_grid_pinpoints=pinpoints or next_pinpoints(crop))
    return LlavaNextProcessor(image_processor=ip, tokenizer=_tokenizer(), patch_size=patch,
                              vision_feature_select_strategy=strategy, num_additional_image_tokens=extra)


def llava_onevision_processor(crop=384, patch=14, strategy="full", extra=0, max_crops=9, pinpoints=None):
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil)

    ip = LlavaOnevisionImageProcessorPil(size={"height": crop, "width": crop},
                                         image_grid_pinpoints=pinpoints or ov_pinpoints(crop))
    return onevision_class()(image_processor=ip, tokenizer=_tokenizer(), video_processor=None,
                             num_image_tokens=(crop // patch) ** 2, vision_feature_select_strategy=strategy,
                             vision_aspect_ratio=f"anyres_max_{max_crops}")


def save_processor(proc, folder: Path) -> Path:
    """The processor's folder, as ``AutoProcessor.from_pretrained`` would load it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if "video_processor" not in proc.get_attributes():
        proc.save_pretrained(folder)
        return folder
    proc.image_processor.save_pretrained(folder)
    proc.tokenizer.save_pretrained(folder)
    cfg = {k: v for k, v in proc.to_dict().items() if k not in ("image_processor", "video_processor")}
    cfg["processor_class"] = "LlavaOnevisionProcessor"  # not the test's subclass
    (folder / "processor_config.json").write_text(json.dumps(cfg, indent=2))
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    pre["processor_class"] = "LlavaOnevisionProcessor"  # as on the hub
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    return folder


def image_token_count(proc, images, text: str) -> int:
    """How many image tokens the processor's own ``__call__`` puts in ``input_ids`` for one sample."""
    out = proc(images=[images], text=[text], return_tensors="pt")
    return int((out["input_ids"] == proc.image_token_id).sum())


def tiny_model(family: str, crop: int, patch: int, strategy: str, pinpoints, cls: bool, max_crops: int = 9):
    """A real LlavaNext / LlavaOnevision model with a one-layer CLIP (``cls``) or SigLIP tower."""
    import torch
    from transformers import (CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                              SiglipVisionConfig)

    torch.manual_seed(0)
    text = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1)
    tower = (CLIPVisionConfig if cls else SiglipVisionConfig)(
        image_size=crop, patch_size=patch, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2)
    common = dict(vision_config=tower.to_dict(), text_config=text.to_dict(), image_grid_pinpoints=pinpoints,
                  vision_feature_select_strategy=strategy, vision_feature_layer=-1, image_token_index=5)
    if family == "llava_next":
        model = LlavaNextForConditionalGeneration(LlavaNextConfig(**common))
    else:
        model = LlavaOnevisionForConditionalGeneration(
            LlavaOnevisionConfig(**common, vision_aspect_ratio=f"anyres_max_{max_crops}"))
    return model.eval()


def run_samples(proc, model, family: str, samples: list[list]) -> tuple[list[int], list[int]]:
    """One processor ``__call__`` over a batch of samples (each a list of images, one ``<image>`` each) and
    one ``get_image_features``: (image tokens in each sample's ``input_ids``, features of each image)."""
    import torch

    out = proc(images=samples, text=["<image>" * len(s) + " describe" for s in samples], return_tensors="pt",
               padding=True)
    tokens = (out["input_ids"] == proc.image_token_id).sum(dim=1).tolist()
    if model is None:
        return tokens, []
    kw = {"batch_num_images": out["batch_num_images"]} if family == "llava_onevision" else {}
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=out["pixel_values"], image_sizes=out["image_sizes"],
                                               **kw)
    return tokens, [int(f.shape[0]) for f in feats.pooler_output]
