"""Model assembly: transformers' own LLaVA (SigLIP tower + mlp2x_gelu projector + Qwen3), parts and groups.

The build's family decides the class (``LlavaForConditionalGeneration``, ``LlavaNextForConditionalGeneration``,
``LlavaOnevisionForConditionalGeneration``; :mod:`parsit_train.families`), with SigLIP / SigLIP2 / CLIP towers
and any causal LM as ``text_config``; what follows holds for each.

Why transformers' classes rather than a hand-written architecture: the exported folder then loads with
``LlavaForConditionalGeneration.from_pretrained`` anywhere (vLLM, TGI, the HF hub) with no conversion.
``LlavaMultiModalProjector`` is exactly LLaVA's ``mlp2x_gelu`` (linear, GELU, linear).

SigLIP has no CLS token, so the feature select strategy is ``full`` (``default`` would drop a real
patch). The pooling head of SigLIP (``vision_use_head``) is never used by LLaVA, so it is not built: a
parameter that never gets a gradient is dead weight in the optimizer and the checkpoint.

A run starts from one merged LLaVA folder (:func:`load_model`: one ``from_pretrained``, partitioned at
construction under ZeRO-3, in the training dtype, every weight accounted for); ``parsit_train.assemble``
writes that folder from two towers. :func:`build_model` materialises a model from inline configs or the
towers directly (tiny test models, and the start folder of an inline-config run).

The three parts (``projector``, ``vision_tower``, ``language_model``) are frozen or unfrozen here,
before the DeepSpeed engine exists, identically on every rank; the optimizer groups carry one learning
rate per part.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen3Config,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from parsit_data.errors import ParsitError
from parsit_train.compat import flash_attn_2_available, hf_deepspeed_config, no_hub_kernels, ndim, numel, set_attn_implementation
from parsit_train.config import PARTS, ModelConfig

log = logging.getLogger(__name__)

PROJECTOR_FILE = "projector.safetensors"
# Parameter-name prefixes of each part inside LlavaForConditionalGeneration (transformers 5.x layout).
_PREFIXES = {
    "projector": "model.multi_modal_projector.",
    "vision_tower": "model.vision_tower.",
}


#: Parameters of the anyres families outside the projector module that belong to its part.
_PROJECTOR_EXTRA = ("model.image_newline",)


def part_of(name: str) -> str:
    """The part a parameter belongs to: everything that is not vision or projector is the LM (lm_head too).
    LLaVA-NeXT / OneVision's ``image_newline`` (separates rows of visual features) is the projector's."""
    if name in _PROJECTOR_EXTRA:
        return "projector"
    for part, prefix in _PREFIXES.items():
        if name.startswith(prefix):
            return part
    return "language_model"


# --- configs --------------------------------------------------------------------------------------------
def vision_config_of(spec) -> SiglipVisionConfig:
    """SigLIP (SigLIP2 fixed-resolution checkpoints are SigLIP) or CLIP; an inline config may name its
    ``model_type`` (default ``siglip_vision_model``)."""
    from parsit_train.families import vision_config_from

    cfg = vision_config_from(spec.config, spec.path)
    if isinstance(cfg, SiglipVisionConfig):
        cfg.vision_use_head = False
    return cfg


def text_config_of(spec) -> Qwen3Config:
    """Any causal LM transformers knows (Qwen2, Qwen2.5, Qwen3, Llama...); an inline config may name its
    ``model_type`` (default ``qwen3``)."""
    from parsit_train.families import text_config_from

    return text_config_from(spec.config, spec.path)


DEFAULT_VISION_FEATURE_LAYER = -2  # LLaVA's choice: the second-to-last hidden state of the vision tower


def feature_layer(mcfg: ModelConfig) -> int:
    """The run's vision feature layer when it builds the model from two towers (unset: the LLaVA default)."""
    return DEFAULT_VISION_FEATURE_LAYER if mcfg.vision_feature_layer is None else mcfg.vision_feature_layer


def llava_config(mcfg: ModelConfig, vision: dict | None = None) -> LlavaConfig:
    vc, tc = vision_config_of(mcfg.vision_tower), text_config_of(mcfg.language_model)
    return combine_configs(vc, tc, mcfg.image_token_id, feature_layer(mcfg), vision, mcfg.video_token_id)


def apply_feature_layer(config: LlavaConfig, wanted: int | None, source: Path) -> None:
    """``model.vision_feature_layer`` over an ``init_from`` folder's own (unset: the folder's stays).

    The projector of a folder was trained on its own layer's features, so a change is logged as a warning;
    a layer the vision tower does not have (it has num_hidden_layers + 1 hidden states) is refused, and so is
    0 (the patch embeddings: transformers 5.25's LLaVA asks the tower for hidden states only when the layer
    index is truthy, and then fails)."""
    if wanted is None or wanted == config.vision_feature_layer:
        return
    states = int(config.vision_config.num_hidden_layers) + 1
    if not -states <= wanted < states or wanted == 0:
        raise ParsitError(f"model.vision_feature_layer {wanted} is not a usable hidden state of {source}'s vision "
                          f"tower ({states} of them: -{states} .. -1 or 1 .. {states - 1})")
    log.warning("model.vision_feature_layer %d replaces %s's own %s: its projector was trained on other features",
                wanted, source, config.vision_feature_layer)
    config.vision_feature_layer = wanted


def combine_configs(vc: SiglipVisionConfig, tc: Qwen3Config, image_token_id: int,
                    vision_feature_layer: int, vision: dict | None = None,
                    video_token_id: int | None = None) -> LlavaConfig:
    """The model config: plain LLaVA, or the build's anyres family (``vision``: the manifest's block).

    Plain LLaVA takes the build's ``vision_feature_select_strategy`` (a ``LlavaProcessor`` folder's: ``full``
    keeps a CLIP tower's CLS, ``default`` drops it) and its per-image count as ``image_seq_length``; a build
    made without a processor is ``full`` (SigLIP has no CLS)."""
    from parsit_train.families import geometry_of

    if vision and (vision.get("family") or "llava") != "llava":
        from parsit_train.families import model_config

        return model_config(geometry_of(vision), vc, tc, image_token_id, vision_feature_layer, video_token_id)
    strategy, tokens = "full", (vc.image_size // vc.patch_size) ** 2
    if vision and vision.get("family"):
        g = geometry_of(vision)
        strategy, tokens = g.vision_feature_select_strategy, g.tokens_for(g.image_size, g.image_size, 1)
    return LlavaConfig(
        vision_config=vc,
        text_config=tc,
        image_token_index=image_token_id,
        image_seq_length=tokens,
        projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=vision_feature_layer,
        tie_word_embeddings=bool(getattr(tc, "tie_word_embeddings", False)),
    )


# --- building -------------------------------------------------------------------------------------------
ATTN_IMPLEMENTATIONS = ("flash_attention_2", "sdpa", "eager")


def check_attn_implementation(name: str, device: str | None = None) -> None:
    """Refuse an attention implementation that is unknown, not installed, or not usable on the device."""
    if name not in ATTN_IMPLEMENTATIONS:
        raise ParsitError(f"unknown model.attn_implementation {name!r}: choose one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if name != "flash_attention_2":
        return
    if not flash_attn_2_available():
        raise ParsitError(
            "model.attn_implementation is flash_attention_2 but the flash_attn package is not installed (or not "
            "usable with this torch/CUDA): pip install flash-attn, or use sdpa"
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cuda":
        raise ParsitError(f"flash_attention_2 runs on CUDA GPUs only; this rank's device is {device}: use sdpa or eager")
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        raise ParsitError(f"flash_attention_2 needs an Ampere or newer GPU (compute capability >= 8.0), this one is "
                          f"{major}.x: use sdpa")


def _load_part(module: torch.nn.Module, state: dict, what: str, source: Path) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing:
        raise ParsitError(f"{source}: the {what} checkpoint lacks {len(missing)} weights (e.g. {missing[0]})")
    if unexpected:
        log.info("%s: ignored %d weights not used by LLaVA (e.g. %s)", source, len(unexpected), unexpected[0])


def build_model(mcfg: ModelConfig, vision: dict | None = None) -> LlavaForConditionalGeneration:
    """The LLaVA model materialised in fp32 on CPU, from inline configs or the two towers' folders.

    Training does not call this for real models: it starts from one merged folder (:func:`load_model`),
    written by ``parsit-train assemble`` (:mod:`parsit_train.assemble`), or, for inline (tiny) configs, by
    saving what this function builds. Tests use it to build tiny models directly.
    """
    if mcfg.init_from is not None:
        model = load_model(mcfg.init_from, mcfg, torch.float32)[0]
    else:
        from parsit_train.families import family_name_of_config, model_class

        cfg = llava_config(mcfg, vision)
        set_attn_implementation(cfg, mcfg.attn_implementation)
        model = model_class(family_name_of_config(cfg))(cfg)
        if mcfg.vision_tower.path is not None:
            from transformers import CLIPVisionModel

            clip = model.config.vision_config.model_type == "clip_vision_model"
            tower = (CLIPVisionModel if clip else SiglipVisionModel).from_pretrained(
                str(mcfg.vision_tower.path), dtype=torch.float32, **no_hub_kernels())
            _load_part(model.model.vision_tower, tower.state_dict(), "vision tower", mcfg.vision_tower.path)
            del tower
        if mcfg.language_model.path is not None:
            lm = AutoModelForCausalLM.from_pretrained(str(mcfg.language_model.path), dtype=torch.float32,
                                                      **no_hub_kernels())
            _load_part(model.model.language_model, lm.model.state_dict(), "language model", mcfg.language_model.path)
            if not model.config.tie_word_embeddings:
                model.lm_head.load_state_dict(lm.lm_head.state_dict())
            del lm
        if model.config.tie_word_embeddings:
            model.tie_weights()
    return finish_model(model, mcfg)


def load_model(folder: Path, mcfg: ModelConfig, dtype: torch.dtype, ds_config: dict | None = None):
    """One ``from_pretrained`` of a merged LLaVA folder: ``(model, keep_alive)``.

    Under ZeRO-3 (``ds_config`` with stage 3) an ``HfDeepSpeedConfig`` is created first, so transformers
    builds the model inside ``deepspeed.zero.Init``: every parameter is partitioned as it is created and
    rank 0 copies each checkpoint tensor into its partitions; no rank ever holds the whole model. The
    caller keeps ``keep_alive`` until ``deepspeed.initialize`` has run (transformers holds only a weak
    reference to it). Weights load in ``dtype`` (bf16 stays bf16: nothing is upcast to fp32 first). A
    weight the model needs and the folder lacks is an error naming it, never a silent random init.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ParsitError(f"{folder} has no config.json: give a LLaVA folder (parsit-train assemble writes one)")
    check_attn_implementation(mcfg.attn_implementation)
    from parsit_train.families import family_name_of_config, model_class

    cfg = AutoConfig.from_pretrained(str(folder))
    if family_name_of_config(cfg) is None:
        raise ParsitError(f"{folder} is not a LLaVA model (config type {type(cfg).__name__}): run parsit-train "
                          "assemble to merge a vision tower and a language model into one")
    apply_feature_layer(cfg, mcfg.vision_feature_layer, folder)
    if cfg.image_token_id != mcfg.image_token_id:
        raise ParsitError(
            f"{folder} uses image token id {cfg.image_token_id} but model.image_token_id "
            f"is {mcfg.image_token_id}: they must agree with the collator"
        )
    zero3 = bool(ds_config) and int(ds_config.get("zero_optimization", {}).get("stage", 0)) == 3
    keep_alive = hf_deepspeed_config(ds_config) if zero3 else None
    model, info = model_class(family_name_of_config(cfg)).from_pretrained(
        str(folder), config=cfg, dtype=dtype, attn_implementation=mcfg.attn_implementation, output_loading_info=True,
        **no_hub_kernels()
    )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ParsitError(
            f"{folder} lacks {len(missing)} weight(s) the model needs, e.g. {', '.join(missing[:3])}: the folder "
            "is incomplete or for another architecture (re-run parsit-train assemble)"
        )
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        raise ParsitError(f"{folder}: weight(s) with the wrong shape for its config, e.g. {mismatched[0]}")
    return finish_model(model, mcfg), keep_alive


def finish_model(model: LlavaForConditionalGeneration, mcfg: ModelConfig) -> LlavaForConditionalGeneration:
    if mcfg.projector_weights is not None:
        import deepspeed

        # Under ZeRO-3 the projector is partitioned: gather it, let rank 0 load, re-partition.
        with deepspeed.zero.GatheredParameters(projector_params(model), modifier_rank=0):
            if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
                load_projector(model, mcfg.projector_weights)
    if mcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    from parsit_train.video_model import enable_ragged_videos

    enable_ragged_videos(model)  # OneVision: videos of different frame counts in one micro-batch
    return model


def check_compatibility(model: LlavaForConditionalGeneration, vision: dict, vocab_size: int) -> None:
    """Refuse a model whose vision geometry or vocabulary disagrees with the shards' manifest."""
    vc = model.config.vision_config
    problems = []
    for key in ("image_size", "patch_size"):
        if key in vision and int(vision[key]) != int(getattr(vc, key)):
            problems.append(f"{key}: shards {vision[key]}, vision tower {getattr(vc, key)}")
    if problems:
        raise ParsitError(
            "the vision tower does not match the geometry the shards were built for ("
            + "; ".join(problems)
            + "): rebuild the data with this tower's --image-size/--patch-size, or use a matching tower"
        )
    if ((vision or {}).get("family") not in (None, "llava") or (vision or {}).get("processor")
            or not isinstance(model.config, LlavaConfig)):
        from parsit_train.families import check_model_matches

        check_model_matches(model.config, vision)
    lm_vocab = model.config.text_config.vocab_size
    if lm_vocab < vocab_size:
        raise ParsitError(
            f"the language model's vocabulary ({lm_vocab}) is smaller than the tokenizer's ({vocab_size}): "
            "use a model built for this tokenizer (or set vocab_size >= the tokenizer size)"
        )
    if model.config.image_token_id >= lm_vocab:
        raise ParsitError(f"image token id {model.config.image_token_id} is outside the vocabulary ({lm_vocab})")


# --- parts, report, optimizer groups --------------------------------------------------------------------
def set_trainable(model: torch.nn.Module, parts: list[str]) -> None:
    """Freeze everything, then unfreeze the listed parts (before the engine is built, on every rank)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ParsitError(f"unknown trainable part(s) {sorted(unknown)}: choose from {list(PARTS)}")
    for name, p in model.named_parameters():
        p.requires_grad_(part_of(name) in parts)
    if not any(p.requires_grad for p in model.parameters()):
        raise ParsitError("nothing is trainable: list at least one of projector, vision_tower, language_model")


@dataclass
class PartCount:
    part: str
    trainable: int
    total: int


def parameter_report(model: torch.nn.Module) -> list[PartCount]:
    counts = {part: PartCount(part, 0, 0) for part in PARTS}
    for name, p in model.named_parameters():
        c = counts[part_of(name)]
        n = numel(p)  # ZeRO-3: the full size, not the (empty) local tensor
        c.total += n
        if p.requires_grad:
            c.trainable += n
    return list(counts.values())


def format_report(rows: list[PartCount]) -> str:
    lines = [f"{'part':<16}{'trainable':>14}{'total':>14}"]
    for r in rows + [PartCount("all", sum(r.trainable for r in rows), sum(r.total for r in rows))]:
        lines.append(f"{r.part:<16}{r.trainable:>14,}{r.total:>14,}")
    return "\n".join(lines)


def param_groups(model: torch.nn.Module, lrs: dict[str, float], weight_decay: float) -> list[dict]:
    """One group per trainable part (and decay/no-decay split), each with its own learning rate.

    Biases and norm weights (1-D tensors) get no weight decay, the usual convention. Each group keeps a
    ``part`` key so the loop can log per-part learning rates and tests can check them.
    """
    buckets: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = weight_decay > 0 and ndim(p) >= 2
        buckets.setdefault((part_of(name), decay), []).append(p)
    groups = []
    for (part, decay), params in sorted(buckets.items()):
        groups.append(
            {"params": params, "lr": lrs[part], "weight_decay": weight_decay if decay else 0.0, "part": part}
        )
    if not groups:
        raise ParsitError("nothing is trainable: list at least one of projector, vision_tower, language_model")
    return groups


# --- projector export -----------------------------------------------------------------------------------
def projector_params(model) -> list[torch.nn.Parameter]:
    """The projector part's parameters: the projector module, and ``image_newline`` in the anyres families."""
    params = list(model.model.multi_modal_projector.parameters())
    newline = getattr(model.model, "image_newline", None)
    return params + ([newline] if newline is not None else [])


def projector_state(model: LlavaForConditionalGeneration) -> dict[str, torch.Tensor]:
    state = {k: v.detach().cpu().contiguous() for k, v in model.model.multi_modal_projector.state_dict().items()}
    newline = getattr(model.model, "image_newline", None)
    if newline is not None:
        state["image_newline"] = newline.detach().cpu().contiguous()
    return state


def save_projector(state: dict[str, torch.Tensor], config: LlavaConfig, path: Path) -> Path:
    from safetensors.torch import save_file

    meta = {
        "format": "parsit.projector.v1",
        "projector": "mlp2x_gelu",
        "vision_hidden_size": str(config.vision_config.hidden_size),
        "text_hidden_size": str(config.text_config.hidden_size),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_projector(model: LlavaForConditionalGeneration, path: Path) -> None:
    """Load a projector export into a model, refusing one made for other hidden sizes."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / PROJECTOR_FILE
    if not path.is_file():
        raise ParsitError(f"no projector weights at {path}: give the projector.safetensors of a pretrain run")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    want = (str(model.config.vision_config.hidden_size), str(model.config.text_config.hidden_size))
    have = (meta.get("vision_hidden_size"), meta.get("text_hidden_size"))
    if have != want:
        raise ParsitError(f"{path} is a projector for hidden sizes {have}, this model needs {want}")
    state = load_file(str(path))
    newline = getattr(model.model, "image_newline", None)
    if (newline is not None) != ("image_newline" in state):
        raise ParsitError(f"{path} is a projector {'with' if 'image_newline' in state else 'without'} an image_newline, "
                          f"this model ({type(model).__name__}) {'has' if newline is not None else 'has none'}")
    if newline is not None:
        with torch.no_grad():
            newline.copy_(state.pop("image_newline").to(newline.dtype))
    proj = model.model.multi_modal_projector
    ref = proj.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()}
    proj.load_state_dict(state, strict=True)
