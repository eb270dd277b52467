"""``parsit-train assemble``: a SigLIP tower and a Qwen3 model merged into one LLaVA folder, streamed.

The output is what ``LlavaForConditionalGeneration.save_pretrained`` would write for the combined model
(config, safetensors shards in transformers' on-disk key layout, see :data:`compat.LLAVA_DISK_PREFIXES`,
an index), plus the serving files (:mod:`parsit_train.serving`: processor, chat template, generation
config). Training starts from it with one ``from_pretrained`` (``model.init_from``), which under ZeRO-3
loads it partitioned.

Streaming: the shard headers are planned from the sources' safetensors headers (names, dtypes, shapes;
no tensor data), then each tensor is read from its memory-mapped source and written straight into its
shard, one at a time. The process never holds more than the largest tensor (the embedding matrix), not the
model. Weights keep their own dtype (a bf16 tower stays bf16); the projector, when no ``--projector`` is
given, is initialised from ``--seed`` exactly as transformers initialises ``LlavaMultiModalProjector``,
in the language model's dtype.

Every weight the LLaVA model needs must come from a source: a missing one is an error naming it, a
source weight LLaVA does not use (SigLIP's pooling head, a full SigLIP's text tower) is skipped and
counted in the log.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from parsit_data.errors import ParsitError
from parsit_train.compat import llava_disk_key, tied_weight_keys
from parsit_train.config import TowerSpec

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 2 * 1024**3
INDEX_FILE = "model.safetensors.index.json"
MARKER = "parsit_assembled.json"

_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass
class Entry:
    """One tensor of the output: its on-disk name, dtype, shape, and how to read it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    fetch: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        n = _SIZES[self.dtype]
        for d in self.shape:
            n *= d
        return n


# --- sources --------------------------------------------------------------------------------------------
def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ParsitError(f"{folder} has no safetensors weights (model.safetensors or an index): convert the "
                          "checkpoint with save_pretrained(safe_serialization=True)")
    return files


def _source_tensors(folder: Path) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    """name -> (file, dtype, shape) from the safetensors headers only."""
    from safetensors import safe_open

    out = {}
    for f in _safetensors_files(folder):
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                sl = h.get_slice(k)
                out[k] = (f, sl.get_dtype(), tuple(int(x) for x in sl.get_shape()))
    return out


def _reader(path: Path, key: str) -> Callable[[], torch.Tensor]:
    def fetch() -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as h:
            return h.get_tensor(key)

    return fetch


def _vision_name(key: str) -> str | None:
    """A SigLIP checkpoint name as LLaVA's ``vision_tower.*`` or None when LLaVA does not use it."""
    if key.startswith("text_model.") or key in {"logit_scale", "logit_bias"}:
        return None  # a full SiglipModel: its text tower
    key = key.removeprefix("vision_model.")
    if key.startswith("head."):
        return None  # the pooling head (vision_use_head is off in LLaVA)
    return "vision_tower." + key


def _lm_name(key: str) -> str | None:
    if key.startswith("model.") or key.startswith("lm_head."):
        return "language_model." + key
    return None


# --- writing --------------------------------------------------------------------------------------------
def _plan(entries: list[Entry], max_bytes: int) -> list[list[Entry]]:
    shards: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def write_safetensors_streaming(path: Path, entries: list[Entry]) -> None:
    """One safetensors file written tensor by tensor (the header first, from shapes and dtypes)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for e in entries:
            t = e.fetch()
            if _DTYPES.get(t.dtype) != e.dtype or tuple(t.shape) != e.shape:
                raise ParsitError(f"{e.name}: read {t.dtype} {tuple(t.shape)}, the header said {e.dtype} {e.shape}")
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            del t
    os.replace(tmp, path)


def write_shards(out: Path, entries: list[Entry], max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Path]:
    shards = _plan(entries, max_shard_bytes)
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for name, group in zip(names, shards, strict=True):
        write_safetensors_streaming(out / name, group)
        weight_map.update({e.name: name for e in group})
    if n > 1:
        index = {"metadata": {"total_size": sum(e.nbytes for e in entries)}, "weight_map": weight_map}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [out / n for n in names]


# --- assembling -----------------------------------------------------------------------------------------
def _dtype_name(config) -> torch.dtype:
    d = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return getattr(torch, d) if isinstance(d, str) else d


def _projector_entries(cfg, projector: Path | None, seed: int, dtype: torch.dtype) -> list[Entry]:
    """The projector's tensors (and, for LLaVA-NeXT / OneVision, ``image_newline``, initialised as upstream:
    N(0, 1/sqrt(text hidden size)), seeded), from a pretrain run's projector.safetensors or a seeded init."""
    from safetensors import safe_open
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    from parsit_train.families import family_name_of_config, image_newline

    anyres = family_name_of_config(cfg) != "llava"

    if projector is not None:
        path = Path(projector)
        if path.is_dir():
            path = path / "projector.safetensors"
        if not path.is_file():
            raise ParsitError(f"no projector weights at {path}: give the projector.safetensors of a pretrain run")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        want = (str(cfg.vision_config.hidden_size), str(cfg.text_config.hidden_size))
        if (meta.get("vision_hidden_size"), meta.get("text_hidden_size")) != want:
            raise ParsitError(f"{path} is a projector for hidden sizes "
                              f"{(meta.get('vision_hidden_size'), meta.get('text_hidden_size'))}, this model needs {want}")
    else:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        state = LlavaMultiModalProjector(cfg).to(dtype).state_dict()
        torch.random.set_rng_state(gen_state)
    newline = state.pop("image_newline", None)
    if anyres and newline is None:
        newline = image_newline(cfg.text_config.hidden_size, dtype, seed)
    if not anyres and newline is not None:
        raise ParsitError(f"{projector} holds an image_newline (a LLaVA-NeXT / OneVision projector); this model is "
                          "plain LLaVA")
    extra = [Entry("image_newline", _DTYPES[newline.dtype], tuple(newline.shape), (lambda v=newline: v))] if anyres else []
    return extra + [Entry("multi_modal_projector." + k, _DTYPES[v.dtype], tuple(v.shape), (lambda v=v: v))
            for k, v in sorted(state.items())]


def assemble(
    vision_tower: Path,
    language_model: Path,
    out: Path,
    projector: Path | None = None,
    *,
    image_token_id: int = 151655,
    video_token_id: int | None = None,
    vision_feature_layer: int = -2,
    seed: int = 0,
    tokenizer: str | Path = "qwen3",
    vision: dict | None = None,
    template: dict | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    serving: bool = True,
) -> Path:
    """Write the merged LLaVA folder ``out``; returns it.

    ``serving=False`` leaves out the processor and chat template (a synthetic model whose vocabulary is not
    the tokenizer's, as in benchmarks).

    ``vision`` / ``template``: the build's manifest blocks the serving files reproduce (default: the tower's
    own geometry with aspect ``pad``, and ``qwen_1_5`` with its default system prompt).
    """
    from parsit_data.format import resolve_tokenizer_path
    from parsit_train.families import family_name_of_config, model_class
    from parsit_train.model import combine_configs, text_config_of, vision_config_of
    from parsit_train.serving import write_serving_files

    vision_tower, language_model, out = Path(vision_tower), Path(language_model), Path(out)
    for what, folder in (("vision tower", vision_tower), ("language model", language_model)):
        if not (folder / "config.json").is_file():
            raise ParsitError(f"the {what} {folder} is not a model folder (no config.json): give a local Hugging "
                              "Face folder (nothing is downloaded)")
    vc = vision_config_of(TowerSpec(path=vision_tower))
    tc = text_config_of(TowerSpec(path=language_model))
    cfg = combine_configs(vc, tc, image_token_id, vision_feature_layer, vision, video_token_id)
    if image_token_id >= tc.vocab_size:
        raise ParsitError(f"image token id {image_token_id} is outside the language model's vocabulary ({tc.vocab_size})")
    tok_dir = resolve_tokenizer_path(tokenizer)
    geometry = vision or {"image_size": vc.image_size, "patch_size": vc.patch_size, "aspect": "pad"}
    if vision and (int(vision["image_size"]) != vc.image_size or int(vision["patch_size"]) != vc.patch_size):
        raise ParsitError(f"the build's geometry (image_size {vision['image_size']}, patch_size {vision['patch_size']}) "
                          f"differs from the vision tower's ({vc.image_size}, {vc.patch_size}): rebuild the data "
                          "for this tower or use a matching tower")
    # The names and shapes the LLaVA model expects, from a model built on the meta device (no memory).
    with torch.device("meta"):
        ref = model_class(family_name_of_config(cfg))(cfg)
    tied = tied_weight_keys(ref)
    expected = {llava_disk_key(k): tuple(v.shape) for k, v in ref.state_dict().items() if k not in tied}
    del ref

    entries: dict[str, Entry] = {}
    skipped = 0
    for folder, rename in ((vision_tower, _vision_name), (language_model, _lm_name)):
        for key, (path, dtype, shape) in _source_tensors(folder).items():
            name = rename(key)
            if name is None or name not in expected:
                skipped += 1
                continue
            if shape != expected[name]:
                raise ParsitError(f"{folder}: {key} has shape {shape}, the LLaVA model built from its config needs "
                                  f"{expected[name]}")
            entries[name] = Entry(name, dtype, shape, _reader(path, key))
    for e in _projector_entries(cfg, projector, seed, _dtype_name(tc)):
        if e.name not in expected or e.shape != expected[e.name]:
            raise ParsitError(f"projector weight {e.name} {e.shape} does not fit this model")
        entries[e.name] = e
    missing = sorted(set(expected) - set(entries))
    if missing:
        raise ParsitError(f"the towers lack {len(missing)} weight(s) the LLaVA model needs, e.g. {', '.join(missing[:3])}")

    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    cfg.dtype = str(_dtype_name(tc)).removeprefix("torch.")
    cfg.save_pretrained(str(out))
    write_shards(out, [entries[k] for k in sorted(entries)], max_shard_bytes)
    tmpl = template or {"name": "qwen_1_5", "system_prompt": "You are a helpful assistant.", "label_policy": "native"}
    if serving:
        write_serving_files(out, tok_dir, geometry, tmpl, image_token_id, vc.patch_size)
    (out / MARKER).write_text(json.dumps({"vision_tower": str(vision_tower), "language_model": str(language_model),
                                          "projector": str(projector) if projector else f"seeded init ({seed})",
                                          "tensors": len(entries), "skipped_source_tensors": skipped}) + "\n")
    log.info("assembled %s: %d tensors (%d source tensors not used by LLaVA)", out, len(entries), skipped)
    return out


def save_built_model(model, out: Path, tokenizer: str | Path, vision: dict, template: dict,
                     image_token_id: int) -> Path:
    """A model built in memory (inline, tiny configs) saved as the run's starting folder."""
    from parsit_data.format import resolve_tokenizer_path
    from parsit_train.serving import write_serving_files

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    write_serving_files(out, resolve_tokenizer_path(tokenizer), vision, template, image_token_id,
                        model.config.vision_config.patch_size)
    (out / MARKER).write_text(json.dumps({"built_from": "inline config"}) + "\n")
    return out


INIT_DIR = "init"


def _init_key(cfg) -> dict:
    """What decides the starting folder's contents: the model section (towers, inline configs) and the seed."""
    from parsit_train.model import feature_layer

    m = cfg.model.model_dump(mode="json", exclude={"projector_weights", "gradient_checkpointing",
                                                   "attn_implementation"})
    m["vision_feature_layer"] = feature_layer(cfg.model)  # unset is -2: the same folder as before
    return {"model": m, "seed": cfg.seed, "tokenizer": str(cfg.data.tokenizer)}


def starting_folder(cfg, vision: dict, template: dict, rank: int) -> Path:
    """The merged folder a run starts from: ``model.init_from``, or the two towers assembled into
    ``output_dir/init`` by rank 0. A finished one (its marker written last) made from the same model section
    and seed is reused (a resumed run does not assemble again); one made from other settings is rebuilt."""
    from parsit_train.model import build_model, feature_layer

    m = cfg.model
    if m.init_from is not None:
        return m.init_from
    out = cfg.output_dir / INIT_DIR
    key = _init_key(cfg)
    marker = out / MARKER
    current = marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("key") == key
    if rank == 0 and not current:
        tokens = {"image_size", "patch_size"} <= set(vision or {})
        geometry = vision if tokens else None
        if m.vision_tower.path is not None and m.language_model.path is not None:
            assemble(m.vision_tower.path, m.language_model.path, out, image_token_id=m.image_token_id,
                     video_token_id=m.video_token_id, vision_feature_layer=feature_layer(m), seed=cfg.seed, tokenizer=cfg.data.tokenizer,
                     vision=geometry, template=template)
        else:  # an inline (tiny) config: built in memory with the run's seed, then saved
            torch.manual_seed(cfg.seed)
            model = build_model(m.model_copy(update={"projector_weights": None, "gradient_checkpointing": False}),
                                geometry)
            vc = model.config.vision_config
            save_built_model(model, out, cfg.data.tokenizer,
                             geometry or {"image_size": vc.image_size, "patch_size": vc.patch_size, "aspect": "pad"},
                             template or {"name": "qwen_1_5", "system_prompt": "You are a helpful assistant.",
                                          "label_policy": "native"}, m.image_token_id)
            del model
        info = json.loads(marker.read_text(encoding="utf-8"))
        marker.write_text(json.dumps({**info, "key": key}) + "\n", encoding="utf-8")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return out
