"""What one rank knows about its builds, read ONCE: the build view.

Every manifest is read once per rank, here (:func:`open_view`: one :func:`parsit_data.format.open_build` per
build), and everything the trainer derives from the builds comes from the :class:`BuildView` that results:
the dataset's shards, the vision geometry and family, the tokenizer's identity (fingerprint, pad id,
vocabulary size), the sequence length limit, the chat template the export reproduces, the video parameters
when the build has them, the model's image (and video) token id when the build names its placeholder, and
the blank image a batch without images gets. The view is frozen: nothing downstream changes it, and the
objects made from it (dataset, image processor, collator, sampler) are complete when constructed.

The checks that make a build unusable for this run (another tokenizer, pad id, image token index, ignore
index, vision geometry) are made here, before any shard is mapped, with the error naming the build.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from parsit_data.errors import ParsitError
from parsit_data.format import (IGNORE_INDEX, IMAGE_TOKEN_INDEX, Build, fingerprint, open_build,
                                resolve_tokenizer_path, sha256_file)
from parsit_data.format.fsio import RemotePath
from parsit_data.format.vision import VisionGeometry

log = logging.getLogger(__name__)

#: A build made without --max-length, and a run without data.max_length: its longest row bounds the length.
UNBOUNDED_LENGTH = 1 << 20


def check_compatible(build: Build, run_fingerprint: str, run_tokenizer: str, pad_token_id: int | None) -> None:
    """Refuse a build whose tokens mean something else to this run's tokenizer or collator."""
    m = build.manifest
    tok = m.tokenizer
    where = f"build {build.root}"
    if tok.sha256 != run_fingerprint:
        raise ParsitError(
            f"{where} was tokenized with a different tokenizer: manifest fingerprint "
            f"{tok.sha256[:16]}… ({tok.path}), this run's tokenizer {run_fingerprint[:16]}… "
            f"({run_tokenizer}); rebuild with --tokenizer {run_tokenizer} or train with the build's tokenizer"
        )
    if pad_token_id is not None and tok.pad_token_id != int(pad_token_id):
        raise ParsitError(
            f"{where} pads with id {tok.pad_token_id} ({tok.pad_token!r}), this run with id {pad_token_id}: "
            "use the build's pad token (pad_token_id=None) or rebuild with --pad-token"
        )
    if m.image_token_index != IMAGE_TOKEN_INDEX:
        raise ParsitError(
            f"{where} marks images with id {m.image_token_index}, this trainer expands "
            f"{IMAGE_TOKEN_INDEX}: rebuild with this release of parsit-data"
        )
    if m.ignore_index != IGNORE_INDEX:
        raise ParsitError(f"{where} masks labels with {m.ignore_index}, this trainer with {IGNORE_INDEX}: rebuild it")


def vision_key(vision: dict | None) -> Any:
    """What must be equal between the builds of one run (one model has one vision tower)."""
    if not vision:
        return None
    pins = vision.get("grid_pinpoints")
    return (
        vision.get("image_size"),
        vision.get("patch_size"),
        vision.get("aspect"),
        tuple(map(tuple, pins)) if pins and vision.get("aspect") == "anyres" else None,
        vision.get("family") or "llava",
        vision.get("vision_feature_select_strategy"),
        vision.get("vision_aspect_ratio"),
        vision.get("num_additional_image_tokens"),
    )


def manifest_digest(build: Build) -> str:
    """sha256 of the build's manifest as parsed (its canonical bytes): what a launch's stamp records."""
    return hashlib.sha256(build.manifest.to_bytes()).hexdigest()


@dataclass(frozen=True)
class BuildView:
    """The builds of one run as this rank opened them (see the module doc). Construct with :func:`open_view`."""

    builds: tuple[Build, ...]
    weights: tuple[float, ...]
    tokenizer: Path  # the run's tokenizer folder (every build's fingerprint equals it)
    pad_token_id: int
    vocab_size: int
    max_length: int
    cache_dir: Path | None = None  # builds on an object store: the rank's shard cache (None: the default)
    cache_limit: int | str | None = None
    default_cache_dir: Path | None = None

    # -- derived (read from the opened manifests, never from the files again) -----------------------
    @cached_property
    def vision(self) -> dict | None:
        """The manifest's ``vision`` block (equal for every build: checked at open)."""
        v = self.builds[0].manifest.vision
        return None if v is None else v.model_dump(mode="json")

    @cached_property
    def geometry(self) -> VisionGeometry | None:
        return None if not self.vision else VisionGeometry.from_json(self.vision)

    @property
    def family(self) -> str | None:
        return None if self.geometry is None else self.geometry.family

    @cached_property
    def template(self) -> dict:
        """The first build's ``template`` block (the export's chat template follows it)."""
        blocks = [b.manifest.template for b in self.builds]
        keys = ("name", "system_prompt", "label_policy")
        if any({k: b.get(k) for k in keys} != {k: blocks[0].get(k) for k in keys} for b in blocks[1:]):
            log.warning("the builds use different templates; the export's chat template follows the first one")
        return blocks[0]

    @cached_property
    def video(self) -> dict | None:
        """The build's video parameters (``manifest.video``, format version 3), None without video support."""
        v = getattr(self.builds[0].manifest, "video", None)
        return v.model_dump(mode="json") if hasattr(v, "model_dump") else v

    @property
    def processor_tokens(self) -> dict[str, str]:
        """The placeholder tokens a build made with ``--processor`` names (``image``, and ``video`` when the
        processor has one); empty for a build made without a processor folder."""
        v = self.vision or {}
        if not v.get("processor"):
            return {}
        out = {"image": v.get("image_token")}
        video = (v.get("processor") or {}).get("video_token")
        if video:
            out["video"] = video
        return {k: t for k, t in out.items() if t}

    def token_id(self, token: str) -> int | None:
        """``token``'s id in the run's tokenizer (None when the tokenizer has no such single entry)."""
        from tokenizers import Tokenizer

        path = self.tokenizer / "tokenizer.json"
        if not path.is_file():
            return None
        return Tokenizer.from_file(str(path)).token_to_id(token)

    @cached_property
    def placeholder_ids(self) -> dict[str, int]:
        """``{"image": id, "video": id}`` of the processor's placeholder tokens in the run's tokenizer."""
        ids = {}
        for kind, token in self.processor_tokens.items():
            tid = self.token_id(token)
            if tid is None:
                raise ParsitError(f"the build's processor uses {token!r} as its {kind} token, which is not a single "
                                  f"token of the run's tokenizer {self.tokenizer}: train with the build's tokenizer")
            ids[kind] = tid
        return ids

    def blank_image_tokens(self) -> int:
        """Visual tokens of the crop-sized blank image a batch without images gets (the family's count)."""
        g = self.geometry
        return g.tokens_for(g.image_size, g.image_size, 1)

    # -- columns the sampler needs ----------------------------------------------------------------
    @property
    def shard_rows(self) -> list[int]:
        return [r for b in self.builds for r in b.shard_rows]

    @property
    def build_rows(self) -> list[int]:
        return [b.num_rows for b in self.builds]

    @property
    def build_ids(self) -> list[str]:
        return [b.manifest.config_hash for b in self.builds]


def _dirs(build_dirs) -> list:
    if isinstance(build_dirs, (str, Path)):
        return [build_dirs]
    return list(build_dirs)


def open_view(
    build_dirs: Sequence[str | Path] | str | Path,
    tokenizer: str | Path,
    *,
    weights: Sequence[float] | None = None,
    pad_token_id: int | None = None,
    max_length: int | None = None,
    verify_checksums: bool = True,
    cache_dir: str | Path | None = None,
    cache_limit: int | str | None = None,
    default_cache_dir: str | Path | None = None,
) -> BuildView:
    """Open every build once (its manifest, validated; its shards' sizes, and sha256 when ``verify_checksums``)
    and check them against the run's tokenizer and pad id and against each other. ``max_length`` None: the
    builds' largest ``--max-length`` (a build made without one: unbounded, its rows bound themselves)."""
    dirs = _dirs(build_dirs)
    if not dirs:
        raise ParsitError("no build directory given: pass at least one DIR written by parsit-data build")
    if weights is not None and len(weights) != len(dirs):
        raise ParsitError(f"{len(weights)} weights for {len(dirs)} builds: give one weight per build")
    tok_folder = resolve_tokenizer_path(tokenizer)
    run_fp = fingerprint(tok_folder)
    builds = []
    for d in dirs:
        build = open_build(d, verify=verify_checksums)
        check_compatible(build, run_fp, str(tok_folder), pad_token_id)
        builds.append(build)
    pads = {b.manifest.tokenizer.pad_token_id for b in builds}
    if len(pads) > 1:
        raise ParsitError(f"the builds pad with different ids {sorted(pads)}: rebuild them with one --pad-token")
    visions = [None if b.manifest.vision is None else b.manifest.vision.model_dump(mode="json") for b in builds]
    if len({vision_key(v) for v in visions}) > 1:
        raise ParsitError(
            "the builds were made for different vision geometries "
            + "; ".join(f"{b.root}: {vision_key(v)}" for b, v in zip(builds, visions, strict=True))
            + ": one model has one vision tower, rebuild them with the same --image-size/--patch-size/--aspect"
        )
    if not max_length:
        max_length = max((int(b.manifest.config.get("max_length") or 0) for b in builds), default=0)
    return BuildView(
        builds=tuple(builds),
        weights=tuple(float(w) for w in (weights if weights is not None else [1.0] * len(builds))),
        tokenizer=tok_folder,
        pad_token_id=int(pads.pop()),
        vocab_size=max(int(b.manifest.tokenizer.vocab_size or 0) for b in builds),
        max_length=int(max_length) if max_length and max_length > 0 else UNBOUNDED_LENGTH,
        cache_dir=None if cache_dir is None else Path(cache_dir),
        cache_limit=cache_limit,
        default_cache_dir=None if default_cache_dir is None else Path(default_cache_dir),
    )


def view_of(cfg, verify_checksums: bool = True) -> BuildView:
    """The build view of a training config (:class:`parsit_train.config.TrainConfig`)."""
    d = cfg.data
    return open_view([b.path for b in d.builds], d.tokenizer, weights=[b.weight for b in d.builds],
                     max_length=d.max_length, verify_checksums=verify_checksums, cache_dir=d.cache_dir,
                     cache_limit=d.cache_limit, default_cache_dir=cfg.output_dir / "shard-cache")


def verify_shards(view: BuildView) -> None:
    """The sha256 of every local shard against its manifest (a rank that opened without hashing and then
    learned it must hash: :func:`parsit_train.preflight.rank_hashes`). Builds on an object store are verified
    shard by shard as they reach the cache."""
    for build in view.builds:
        for path, entry in zip(build.shard_paths, build.manifest.shards, strict=True):
            if isinstance(path, RemotePath):
                continue
            digest = sha256_file(path)
            if digest != entry.sha256:
                raise ParsitError(
                    f"shard {entry.path} of build {build.root} is corrupt: sha256 {digest[:16]}… differs from the "
                    f"manifest's {entry.sha256[:16]}…; restore the file or rebuild {build.root}"
                )
