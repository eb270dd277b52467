"""Every private or version-sensitive DeepSpeed / torch / transformers call of the trainer, in one place.

Checked against: torch 2.13.0, deepspeed 0.19.8, transformers 5.24.0 (``CHECKED_WITH``). When one of
these libraries is upgraded, this module is the list to re-check; tests pin the behaviours the rest of
the trainer relies on: the LLaVA key layout on disk (``tests/train/test_assemble.py``), HfDeepSpeedConfig
switching ``from_pretrained`` to ``zero.Init`` and ds_numel / ds_tensor on partitioned parameters
(``tests/train/test_zero3.py``, ``tests/train/test_model.py``).

Nothing else in ``parsit_train`` reaches into a private attribute of these libraries.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHECKED_WITH = {"torch": "2.13.0", "deepspeed": "0.19.8", "transformers": "5.24.0"}


# --- transformers: loading ----------------------------------------------------------------------------------
def no_hub_kernels() -> dict:
    """``from_pretrained`` options that keep the model's own layers.

    transformers 5.x kernelizes every loaded model by default (``use_kernels=None`` means True): layers are
    swapped for Hugging Face Hub kernels, code fetched at load time, and a model loaded without the ``kernels``
    package raises. On a GPU offline that fails (seen on an H200 under ZeRO-3: "Version 1 of
    'kernels-community/activation' is not available in the local cache"), and online it would train other
    code than the tests run. Parsit loads with ``use_kernels=False``; transformers 4.x had no such default.
    """
    import transformers
    from packaging.version import Version

    return {"use_kernels": False} if Version(transformers.__version__) >= Version("5.0") else {}


# --- DeepSpeed --------------------------------------------------------------------------------------------
def disable_shm_comm_op() -> None:
    """Mark DeepSpeed's shared-memory comm op as incompatible (``deepspeed.ops.__compatible_ops__``, a
    private dict): otherwise every fresh CPU machine JIT-compiles it for about a minute at init."""
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def zero3_consolidated_state_dict(engine) -> dict | None:
    """The full 16-bit state dict on rank 0 under ZeRO-3 (None elsewhere); collective: every rank calls it.

    ``DeepSpeedEngine._zero3_consolidated_16bit_state_dict`` is private; the public
    ``save_16bit_model`` writes a single ``pytorch_model.bin`` file, not a Hugging Face folder.
    """
    return engine._zero3_consolidated_16bit_state_dict()


def numel(p: torch.nn.Parameter) -> int:
    """The full element count of a parameter: under ZeRO-3 a partitioned one is empty and ``ds_numel``
    (a DeepSpeed attribute) holds its size."""
    return int(getattr(p, "ds_numel", p.numel()))


def local_numel(p: torch.nn.Parameter) -> int:
    """Elements this rank holds: ZeRO-3's partition (``ds_tensor``) or the whole tensor."""
    part = getattr(p, "ds_tensor", None)
    return int(part.numel()) if part is not None else int(p.numel())


# --- transformers -----------------------------------------------------------------------------------------
def hf_deepspeed_config(ds_config: dict):
    """``HfDeepSpeedConfig(ds_config)``: while the returned object is alive, ``from_pretrained`` creates
    the model inside ``deepspeed.zero.Init`` (partitioned at construction) and loads each weight into
    its partition. transformers keeps only a weak reference: the caller must hold the object until the
    DeepSpeed engine exists."""
    import importlib.util

    if importlib.util.find_spec("accelerate") is not None:
        from transformers.integrations import HfDeepSpeedConfig

        return HfDeepSpeedConfig(ds_config)
    # transformers' HfDeepSpeedConfig subclasses accelerate's and refuses to exist without it; the only things
    # from_pretrained reads from the registered object (transformers 5.24: is_deepspeed_zero3_enabled and
    # deepspeed_config in integrations/deepspeed.py) are ``is_zero3()`` and ``config``. Without accelerate,
    # register a stand-in that provides exactly those through transformers' own setter.
    from transformers.integrations.deepspeed import set_hf_deepspeed_config

    holder = _ZeroConfig(ds_config)
    set_hf_deepspeed_config(holder)
    return holder


class _ZeroConfig:
    """What transformers reads from a registered HfDeepSpeedConfig (see :func:`hf_deepspeed_config`)."""

    def __init__(self, config: dict) -> None:
        self.config = config

    def is_zero3(self) -> bool:
        return int(self.config.get("zero_optimization", {}).get("stage", 0)) == 3


def set_attn_implementation(config, name: str) -> None:
    """``PretrainedConfig._attn_implementation`` (private setter used when building from a config)."""
    config._attn_implementation = name


def packs_need_one_row(model) -> bool:
    """Whether the language model runs a flash-attention kernel (``text_config._attn_implementation``;
    ``model`` may be a DeepSpeed engine). transformers 5.24-5.25 read packed-sequence boundaries from
    ``position_ids`` on that path only for a one-row batch (``_is_packed_sequence``): see
    :func:`parsit_train.data.collator.one_row`."""
    config = getattr(getattr(model, "module", model), "config", None)
    config = getattr(config, "text_config", config)
    return str(getattr(config, "_attn_implementation", None) or "").startswith("flash_attention")


def flash_attn_2_available() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return bool(is_flash_attn_2_available())


# LlavaForConditionalGeneration's parameter names in memory (transformers >= 4.52: ``model.`` prefix) and
# the names ``save_pretrained`` writes on disk (the legacy layout that vLLM and older transformers read;
# transformers 5.24 maps them back through its conversion mapping on load). ``assemble`` writes the disk
# layout, exactly as ``save_pretrained`` would; test_compat checks this table against save_pretrained.
LLAVA_DISK_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.image_newline", "image_newline"),  # LLaVA-NeXT / OneVision
)


def llava_disk_key(name: str) -> str:
    """The on-disk name of an in-memory LlavaForConditionalGeneration parameter."""
    for mem, disk in LLAVA_DISK_PREFIXES:
        if name.startswith(mem):
            return disk + name[len(mem):]
    raise KeyError(f"not a LlavaForConditionalGeneration parameter name: {name}")


def tied_weight_keys(model) -> set[str]:
    """In-memory names of parameters that are tied to another one (``_tied_weights_keys``: a dict
    target -> source in transformers 5, a list in 4.x); only when the config ties them."""
    if not getattr(model.config, "tie_word_embeddings", False) and not getattr(
        getattr(model.config, "text_config", None), "tie_word_embeddings", False
    ):
        return set()
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return set(keys)


def ndim(p: torch.nn.Parameter) -> int:
    """The full rank of a parameter (``ds_shape`` under ZeRO-3, where the local tensor is flat and empty)."""
    shape = getattr(p, "ds_shape", None)
    return len(shape) if shape is not None else p.ndim


def optimizer_group_layout(engine) -> list[tuple]:
    """(part, has weight decay) of each optimizer group, in order: taken before a ZeRO-3 universal load,
    which overwrites both (see :func:`repair_zero3_universal_load`)."""
    return [(g.get("part"), g.get("weight_decay", 0.0) > 0) for g in engine.optimizer.param_groups]


def repair_zero3_universal_load(engine, universal: Path, layout_before: list[tuple]) -> None:
    """Undo two faults of DeepSpeed 0.19.8's ZeRO-3 universal-checkpoint loader
    (``DeepSpeedZeroOptimizer_Stage3.load_hp_checkpoint_state_from_checkpoint_dir_stage3``), right after
    ``engine.load_checkpoint`` of the universal checkpoint ``universal`` (its ``zero/optimizer_state.pt``);
    ``layout_before``: :func:`optimizer_group_layout` taken before that load:

    * it copies param group 0's hyper-parameters (``lr``, ``weight_decay``, ``betas``, Parsit's ``part``...)
      onto every group: each group gets its own back, from the saved groups (what a same-world-size load
      restores through ``torch.optim.Optimizer.load_state_dict``);
    * it puts one ``step`` tensor object into every sub-group's Adam state, and torch's Adam increments it
      in place, once per sub-group per step: each state gets its own copy of its group's saved step.

    Refuses (ParsitError) what it cannot make exact: another group layout than the saved one (the trainable
    parts or the weight decay changed), or an NVMe-swapped optimizer (its state is not in memory).
    """
    from parsit_data.errors import ParsitError

    zero = engine.optimizer  # DeepSpeedZeroOptimizer_Stage3
    inner = zero.optimizer  # the torch optimizer
    if getattr(zero, "swap_optimizer", False):
        raise ParsitError("resuming a ZeRO-3 run with another number of ranks is not supported with an "
                          "NVMe-offloaded optimizer: resume with the number of ranks that wrote the checkpoint")
    saved = torch.load(universal / "zero" / "optimizer_state.pt", weights_only=False)["optimizer_state_dict"]
    groups, states = saved["param_groups"], saved["state"]

    layout = [(g.get("part"), g.get("weight_decay", 0.0) > 0) for g in groups]
    if layout != layout_before:
        raise ParsitError(
            f"the checkpoint's optimizer groups {layout} (part, weight decay) differ from this run's "
            f"{layout_before}: resume with the trainable parts and weight decay that wrote it")
    for group, saved_group in zip(inner.param_groups, groups, strict=True):
        for key, value in saved_group.items():
            if key != "params":
                group[key] = value
    for sub_group_id, flat in enumerate(zero.fp32_partitioned_groups_flat):
        group_id = zero.sub_group_to_group_id[sub_group_id]
        step = states[groups[group_id]["params"][0]]["step"]
        state = inner.state[flat]
        state["step"] = step.clone() if isinstance(step, torch.Tensor) else step
