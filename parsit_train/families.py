"""The model families Parsit trains: LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision, from one build manifest.

A build records its family and every processor parameter in the manifest's ``vision`` block
(:class:`parsit_data.format.VisionGeometry`, whose ``tokens_for`` counted every image); this module turns
that block into what the trainer needs:

- :func:`model_config`: the transformers config (``LlavaNextConfig`` / ``LlavaOnevisionConfig``; plain
  LLaVA stays in :func:`parsit_train.model.combine_configs`) for a vision tower config and any causal LM
  ``text_config``; :func:`model_class`: the class to build or load.
- :func:`check_model_matches`: a model config and a build that disagree (family, pinpoints, strategy,
  aspect ratio, crop, patch) are refused with both values named, before any rank starts (launch) and again
  when a rank loads the model.
- :func:`image_processor`: the family's PIL image processor (``*ImageProcessorPil``: no torchvision),
  rebuilt from the processor config the manifest stores verbatim, or from the geometry's parameters for a
  build made without ``--processor`` (SigLIP normalisation, as :mod:`parsit_train.data.images`).
- :func:`allow_onevision_processor`: lets ``LlavaOnevisionProcessor`` be constructed and loaded
  (``AutoProcessor.from_pretrained``) on a machine without torchvision (see its doc).
- :func:`vision_config_from` / :func:`text_config_from`: SigLIP / SigLIP2 (fixed resolution) / CLIP towers
  and any causal LM transformers knows (Qwen2, Qwen2.5, Qwen3, Llama, ...).
"""

from __future__ import annotations

import math

import torch

from parsit_data.errors import ParsitError
from parsit_data.format.vision import VisionGeometry

FAMILIES = ("llava", "llava_next", "llava_onevision")
#: Vision towers LLaVA's ``get_image_features`` can drive (SigLIP2's fixed-resolution checkpoints are
#: ``siglip``; the NaFlex ``siglip2`` tower needs spatial shapes LLaVA does not pass).
VISION_TYPES = ("siglip_vision_model", "clip_vision_model")


def geometry_of(vision: dict | None) -> VisionGeometry:
    """The build's :class:`VisionGeometry` from a manifest ``vision`` dict (``llava`` for a pre-family build)."""
    return VisionGeometry.from_json(vision or {})


def describe(g: VisionGeometry) -> str:
    parts = [g.family, f"crop {g.image_size}", f"patch {g.patch_size}", f"strategy {g.vision_feature_select_strategy}"]
    if g.family != "llava":
        parts.append(f"pinpoints {[list(p) for p in g.grid_pinpoints]}")
    if g.vision_aspect_ratio:
        parts.append(g.vision_aspect_ratio)
    return ", ".join(parts)


# --- configs and classes --------------------------------------------------------------------------------
def model_class(name: str):
    from transformers import (LlavaForConditionalGeneration, LlavaNextForConditionalGeneration,
                              LlavaOnevisionForConditionalGeneration)

    return {"llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration,
            "llava_onevision": LlavaOnevisionForConditionalGeneration}[name]


def family_name_of_config(cfg) -> str | None:
    """``llava`` / ``llava_next`` / ``llava_onevision`` for a transformers config, None for anything else."""
    from transformers import LlavaConfig, LlavaNextConfig, LlavaOnevisionConfig

    for cls, name in ((LlavaOnevisionConfig, "llava_onevision"), (LlavaNextConfig, "llava_next"), (LlavaConfig, "llava")):
        if isinstance(cfg, cls):
            return name
    return None


def model_config(g: VisionGeometry, vc, tc, image_token_id: int, vision_feature_layer: int,
                 video_token_id: int | None = None):
    """The anyres family's transformers config for a vision tower config ``vc`` and a causal LM config ``tc``."""
    from transformers import LlavaNextConfig, LlavaOnevisionConfig

    if vc.image_size != g.image_size or vc.patch_size != g.patch_size:
        raise ParsitError(f"the build's geometry ({describe(g)}) differs from the vision tower's (crop "
                          f"{vc.image_size}, patch {vc.patch_size}): rebuild the data for this tower or use a matching tower")
    common = dict(vision_config=vc, text_config=tc, image_token_index=image_token_id, projector_hidden_act="gelu",
                  vision_feature_layer=vision_feature_layer, image_grid_pinpoints=[list(p) for p in g.grid_pinpoints],
                  vision_feature_select_strategy=g.vision_feature_select_strategy,
                  tie_word_embeddings=bool(getattr(tc, "tie_word_embeddings", False)))
    if g.family == "llava_next":
        return LlavaNextConfig(**common, image_seq_length=g.tokens_per_crop)
    if g.family == "llava_onevision":
        video = {} if video_token_id is None else {"video_token_index": int(video_token_id)}
        return LlavaOnevisionConfig(**common, vision_aspect_ratio=g.vision_aspect_ratio, **video)
    raise ParsitError(f"model_config is for the anyres families, not {g.family!r}")


def check_model_matches(cfg, vision: dict | None, where: str = "the model") -> None:
    """Refuse a model config whose family or processing parameters differ from the build's, naming both."""
    g = geometry_of(vision)
    have = family_name_of_config(cfg)
    if have is None:
        raise ParsitError(f"{where} is not a LLaVA family model (config type {type(cfg).__name__})")
    problems = []
    if have != g.family:
        problems.append(f"family: build {g.family}, model {have}")
    vc = cfg.vision_config
    if int(vc.image_size) != g.image_size:
        problems.append(f"crop size: build {g.image_size}, model {vc.image_size}")
    if int(vc.patch_size) != g.patch_size:
        problems.append(f"patch size: build {g.patch_size}, model {vc.patch_size}")
    if have == g.family == "llava" and g.processor is not None and cfg.vision_feature_select_strategy != g.vision_feature_select_strategy:
        problems.append(f"vision_feature_select_strategy: build {g.vision_feature_select_strategy}, model "
                        f"{cfg.vision_feature_select_strategy}")
    if have == g.family and have != "llava":
        model_pins = [list(map(int, p)) for p in cfg.image_grid_pinpoints]
        if model_pins != [list(p) for p in g.grid_pinpoints]:
            problems.append(f"grid pinpoints: build {[list(p) for p in g.grid_pinpoints]}, model {model_pins}")
        if cfg.vision_feature_select_strategy != g.vision_feature_select_strategy:
            problems.append(f"vision_feature_select_strategy: build {g.vision_feature_select_strategy}, model "
                            f"{cfg.vision_feature_select_strategy}")
        if have == "llava_onevision" and cfg.vision_aspect_ratio != g.vision_aspect_ratio:
            problems.append(f"vision_aspect_ratio: build {g.vision_aspect_ratio}, model {cfg.vision_aspect_ratio}")
    if problems:
        raise ParsitError(f"{where} and the build disagree ({'; '.join(problems)}): the visual token counts in the "
                          "shards would not be the model's; rebuild with this model's processor (--processor) or train "
                          "the model the build was made for")


def model_section(mcfg, view):
    """The run's ``model`` section completed from the build view, as a NEW config (nothing is changed in place):

    - ``image_token_id`` (and OneVision's ``video_token_id``): a build made with ``--processor`` names its
      placeholder tokens; their ids in the run's tokenizer are the model's. A config that sets another id,
      or an ``init_from`` folder whose config has another, is refused naming both. A build without a
      processor keeps the config's id (default Qwen3's ``<|image_pad|>``).
    - an inline (tiny) vision tower without ``image_size`` / ``patch_size`` takes the build's geometry."""
    ids = view.placeholder_ids
    update: dict = {}
    folder = None
    if mcfg.init_from is not None and (mcfg.init_from / "config.json").is_file():
        from transformers import AutoConfig

        folder = AutoConfig.from_pretrained(str(mcfg.init_from))
    for kind, field in (("image", "image_token_id"), ("video", "video_token_id")):
        if kind not in ids:
            continue
        want, token = ids[kind], view.processor_tokens[kind]
        have = getattr(mcfg, field)
        if field in mcfg.model_fields_set and have is not None and int(have) != want:
            raise ParsitError(f"model.{field} is {have}, but the build's processor uses {token!r}, id {want} in the "
                              f"run's tokenizer: set model.{field}: {want} or leave it unset (it is derived)")
        theirs = None if folder is None else getattr(folder, field, None)
        if theirs is not None:
            if int(theirs) != want:
                raise ParsitError(f"model.init_from {mcfg.init_from} has {field} {theirs}, but the build's processor uses "
                                  f"{token!r}, id {want} in the run's tokenizer: train the model the build was made for, "
                                  "or rebuild with this model's processor (--processor)")
        update[field] = want
    spec = mcfg.vision_tower
    vision = view.vision or {}
    if spec is not None and spec.config is not None:
        filled = {k: int(vision[k]) for k in ("image_size", "patch_size") if k not in spec.config and k in vision}
        if filled:
            update["vision_tower"] = spec.model_copy(update={"config": {**spec.config, **filled}})
    return mcfg.model_copy(update=update) if update else mcfg


def check_model_section(mcfg, vision: dict | None) -> None:
    """Before any rank starts: the config's model agrees with the build (``launch``'s preflight).

    ``init_from``: its config.json's family and parameters (:func:`check_model_matches`); towers (folders or
    inline configs): their crop and patch size (the anyres family's config is made from the build's)."""
    from transformers import AutoConfig

    if vision is None:
        return
    g = geometry_of(vision)
    if mcfg.init_from is not None:
        if (mcfg.init_from / "config.json").is_file():
            check_model_matches(AutoConfig.from_pretrained(str(mcfg.init_from)), vision, f"model.init_from {mcfg.init_from}")
        return
    spec = mcfg.vision_tower
    if spec is None:
        return
    if spec.path is not None:
        vc = vision_config_from(path=spec.path)
        size, patch, where = vc.image_size, vc.patch_size, f"the vision tower {spec.path}"
    else:
        size, patch, where = spec.config.get("image_size"), spec.config.get("patch_size"), "the inline vision tower"
    problems = [f"{k}: build {b}, model {m}" for k, b, m in (("crop size", g.image_size, size), ("patch size",
                g.patch_size, patch)) if m is not None and int(m) != int(b)]
    if problems:
        raise ParsitError(f"{where} and the build ({describe(g)}) disagree ({'; '.join(problems)}): rebuild the data "
                          "with this tower's processor (--processor) or use a matching tower")


# --- towers ---------------------------------------------------------------------------------------------
def vision_config_from(config: dict | None = None, path=None):
    """A vision tower config (SigLIP, SigLIP2 fixed-resolution, CLIP) from an inline dict or a folder."""
    from transformers import AutoConfig

    if config is not None:
        config = dict(config)
        kind = config.pop("model_type", "siglip_vision_model")
        if kind not in VISION_TYPES:
            raise ParsitError(f"inline vision tower model_type {kind!r}: use one of {', '.join(VISION_TYPES)}")
        return AutoConfig.for_model(kind, **config)
    cfg = AutoConfig.from_pretrained(str(path))
    cfg = getattr(cfg, "vision_config", cfg)  # a full SiglipModel / CLIPModel folder carries vision_config
    if getattr(cfg, "model_type", None) not in VISION_TYPES:
        raise ParsitError(f"{path} is not a SigLIP/SigLIP2/CLIP vision tower (config type {type(cfg).__name__}); "
                          "SigLIP2 NaFlex towers are not supported by LLaVA models")
    return cfg


def text_config_from(config: dict | None = None, path=None):
    """Any causal LM transformers knows (Qwen2, Qwen2.5, Qwen3, Llama, ...) as ``text_config``."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config is not None:
        config = dict(config)
        kind = config.pop("model_type", "qwen3")
        if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ParsitError(f"inline language model model_type {kind!r} is not a causal LM transformers knows")
        return AutoConfig.for_model(kind, **config)
    cfg = AutoConfig.from_pretrained(str(path))
    if getattr(cfg, "model_type", None) not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ParsitError(f"{path} is not a causal language model (config type {type(cfg).__name__})")
    return cfg


def image_newline(hidden_size: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """``image_newline`` initialised as transformers' LlavaNext/OneVision models do: N(0, 1/sqrt(hidden))."""
    gen = torch.Generator().manual_seed(int(seed))
    return (torch.randn(hidden_size, generator=gen) * (1 / math.sqrt(hidden_size))).to(dtype)


# --- the image processor ----------------------------------------------------------------------------------
SIGLIP_NORM = [0.5, 0.5, 0.5]


def image_processor(g: VisionGeometry):
    """The family's PIL image processor (no torchvision), from the processor config the build stored.

    A build made without ``--processor`` (``--aspect anyres``: LLaVA-NeXT's rule on a SigLIP tower) stored
    none: its processor is the family's with the geometry's crop, bicubic, SigLIP's mean = std = 0.5 and no
    centre crop (what the export writes)."""
    import transformers

    if g.family == "llava":
        return _llava_image_processor(g)
    want = "LlavaNextImageProcessor" if g.family == "llava_next" else "LlavaOnevisionImageProcessor"
    if g.image_processor:
        cfg = dict(g.image_processor)
        name = str(cfg.pop("image_processor_type", "") or "").removesuffix("Fast").removesuffix("Pil")
        if name and name != want:
            raise ParsitError(f"the build's image processor is {name}, family {g.family} needs {want}")
        for k in ("processor_class", "auto_map", "_processor_class"):
            cfg.pop(k, None)
    else:
        cfg = {"size": {"height": g.image_size, "width": g.image_size}, "crop_size": {"height": g.image_size,
               "width": g.image_size}, "do_center_crop": False, "image_mean": SIGLIP_NORM, "image_std": SIGLIP_NORM,
               "resample": 3}
    cfg["image_grid_pinpoints"] = [list(p) for p in g.grid_pinpoints]
    return getattr(transformers, want + "Pil")(**cfg)


#: Image processors a ``LlavaProcessor`` folder may name (llava-hf: CLIP; SigLIP towers: SigLIP; LLaVA's own).
LLAVA_IMAGE_PROCESSORS = ("CLIPImageProcessor", "SiglipImageProcessor", "LlavaImageProcessor")


def _llava_image_processor(g: VisionGeometry):
    """A ``LlavaProcessor`` folder's image processor (CLIP's resize-shortest-edge + centre crop, CLIP mean/std,
    as its config says), rebuilt from the config the build stored; PIL backend (no torchvision). A plain-LLaVA
    build made without ``--processor`` stored none: it uses :class:`parsit_train.data.images.ImageProcessor`."""
    import transformers

    if not g.image_processor:
        raise ParsitError("a llava build without a processor folder uses parsit_train.data.images.ImageProcessor")
    cfg = dict(g.image_processor)
    name = str(cfg.pop("image_processor_type", "") or "").removesuffix("Fast").removesuffix("Pil")
    if name not in LLAVA_IMAGE_PROCESSORS:
        raise ParsitError(f"the build's LlavaProcessor uses image processor {name or 'none'!r}; the trainer feeds "
                          f"{', '.join(LLAVA_IMAGE_PROCESSORS)} exactly: rebuild with one of those")
    for k in ("processor_class", "auto_map", "_processor_class"):
        cfg.pop(k, None)
    return getattr(transformers, name + "Pil")(**cfg)


def allow_onevision_processor() -> None:
    """Make ``LlavaOnevisionProcessor`` constructible and loadable without torchvision (idempotent).

    transformers 5 builds a OneVision processor from three parts: image processor, tokenizer and video
    processor. Without torchvision, ``transformers.VideoProcessorMixin`` (the class the processor checks
    its video processor against) is not exported, and ``AutoVideoProcessor`` resolves
    ``LlavaOnevisionVideoProcessor`` to a placeholder that raises. The class itself imports and constructs
    without torchvision (it needs it only to process videos). So: expose the mixin to the processor's
    class lookup and register the real video processor class for ``LlavaOnevisionConfig``. Images and text
    are processed exactly as with torchvision's stack installed except that the image processor is the PIL
    backend; videos still need torchvision. Nothing is done when torchvision imports.
    """
    try:
        import torchvision  # noqa: F401

        return
    except Exception:  # noqa: BLE001 - absent, or present but broken beside this torch
        pass
    import transformers.processing_utils as pu
    from transformers import LlavaOnevisionConfig
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor
    from transformers.video_processing_utils import VideoProcessorMixin

    if "VideoProcessorMixin" not in vars(pu.transformers_module):
        setattr(pu.transformers_module, "VideoProcessorMixin", VideoProcessorMixin)
    AutoVideoProcessor.register(LlavaOnevisionConfig, LlavaOnevisionVideoProcessor, exist_ok=True)
