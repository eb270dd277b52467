"""The training configuration: one YAML file, validated by pydantic before any process starts.

Every section forbids unknown keys (a typo such as ``lerning_rate`` is an error, not a silently ignored
setting) and every problem is reported in one message, so a user fixes a config in one pass. Relative
paths are resolved against the config file's folder, so a config means the same thing whatever the
working directory of the process that reads it (torchrun workers, Ray workers).

``schemas/train_config.schema.json`` is exported from :class:`TrainConfig` (``write_schema``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from parsit_data.errors import ParsitError
from parsit_data.format import schema_document, schema_text
from parsit_data.format import write_schema as _write_schema

PARTS = ("projector", "vision_tower", "language_model")
Part = Literal["projector", "vision_tower", "language_model"]
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "train_config.schema.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BuildRef(_Strict):
    """One finished build directory and how many times per epoch its samples are seen."""

    path: Path | str = Field(description="a build directory, or a URI (s3://BUCKET/PREFIX) read through data.cache_dir")
    weight: float = Field(1.0, gt=0, description="per-epoch multiplicity of this build's samples")

    @field_validator("path", mode="before")
    @classmethod
    def _uri_or_path(cls, v: Any) -> Any:
        from parsit_data.format.fsio import is_uri

        return v if is_uri(v) else Path(v)  # Path("s3://b") would lose a slash


class DataConfig(_Strict):
    builds: list[BuildRef] = Field(min_length=1)
    tokenizer: str = Field("qwen3", description="'qwen3' (bundled) or a tokenizer folder; checked against manifests")
    max_length: int | None = Field(None, gt=0, description="multimodal length limit per sample (None: manifest's)")
    group_by_length: bool = False
    # Packing (issue 13; docs/PACKING.md)
    pack_length: int | None = Field(
        None, gt=0, description="pack samples into sequences of this many tokens (None: pad each micro-batch); "
        "optim.micro_batch_size then counts packs")
    max_images_per_pack: int | None = Field(None, gt=0, description="cap on a pack's images (vision tower memory)")
    pack_window: int = Field(16384, gt=0, description="samples of the shuffled order the planner packs at once")
    verify: Literal["full", "size"] = Field(
        "full", description="full: sha256 of every shard, once per launch (or node) before training; size: "
        "manifest, sizes and row counts only (very large builds on trusted storage)")
    # -- object storage (issue 15): builds given as URIs are read through this local cache --
    cache_dir: Path | None = Field(None, description="local folder for shards of builds on an object store "
                                   "(None: output_dir/shard-cache)")
    cache_limit: int | str | None = Field(None, description="bytes the cache may hold (e.g. 20GiB); >= 2 shards "
                                          "(None: the build's size, at most half the free disk per local rank)")
    shuffle_window_shards: int | None = Field(None, ge=1, description="shuffle within windows of this many shards "
                                              "(a small cache then reads each shard once per epoch); None: whole build")

    @field_validator("builds", mode="before")
    @classmethod
    def _paths_as_refs(cls, v: Any) -> Any:
        # `builds: [dir1, dir2]` is the common case: accept plain paths.
        if isinstance(v, list):
            return [{"path": x} if isinstance(x, str | Path) else x for x in v]
        return v


class TowerSpec(_Strict):
    """A pretrained model folder (``path``) or an inline config for a tiny model (``config``)."""

    path: Path | None = None
    config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> TowerSpec:
        if (self.path is None) == (self.config is None):
            raise ValueError("give exactly one of `path` (a pretrained folder) or `config` (an inline config)")
        return self


class ModelConfig(_Strict):
    vision_tower: TowerSpec | None = None
    language_model: TowerSpec | None = None
    init_from: Path | None = Field(
        None, description="a Hugging Face LLaVA folder (e.g. a previous run's export) instead of the two towers"
    )
    projector: Literal["mlp2x_gelu"] = "mlp2x_gelu"
    projector_weights: Path | None = Field(None, description="projector.safetensors of a pretrain run to start from")
    image_token_id: int = Field(151655, ge=0, description="Qwen3 <|image_pad|>; a build made with --processor "
                                "sets it (its placeholder token's id), and a different value here is refused")
    video_token_id: int | None = Field(None, ge=0, description="OneVision's video token id; None: the build's "
                                       "processor's, else the model's own")
    vision_feature_layer: int | None = Field(
        None, description="hidden state of the vision tower fed to the projector (-1: the last layer's). Unset: -2, "
        "or with init_from the folder's own; set with init_from, it replaces the folder's (logged)"
    )
    attn_implementation: Literal["flash_attention_2", "sdpa", "eager"] = Field(
        "sdpa", description="flash_attention_2 needs the flash_attn package and a CUDA GPU (Ampere or newer)"
    )
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _sources(self) -> ModelConfig:
        towers = self.vision_tower is not None and self.language_model is not None
        if self.init_from is None and not towers:
            raise ValueError("give `vision_tower` and `language_model`, or `init_from` (a LLaVA folder)")
        if self.init_from is not None and (self.vision_tower is not None or self.language_model is not None):
            raise ValueError("`init_from` replaces `vision_tower`/`language_model`: give one or the other")
        return self


class LearningRates(_Strict):
    projector: float = Field(1e-3, ge=0)
    vision_tower: float = Field(2e-6, ge=0)
    language_model: float = Field(2e-5, ge=0)


class OptimConfig(_Strict):
    trainable: list[Part] | None = Field(
        None, description="parts to train; None: [projector] for pretrain, all three for finetune"
    )
    lr: LearningRates = LearningRates()
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, ge=0, description="0 disables clipping")
    micro_batch_size: int = Field(1, gt=0, description="samples per rank per forward pass")
    gradient_accumulation_steps: int = Field(1, gt=0)
    epochs: int | None = Field(None, gt=0)
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; wins over epochs when both are set")
    loss_weighting: Literal["token", "sample"] = Field(
        "token", description="token: a step's loss is the mean over all its supervised tokens (every micro-batch, "
        "every rank); sample: the mean over its samples of each sample's mean token loss")


class DeepSpeedConfig(_Strict):
    zero_stage: Literal[2, 3] = 2
    bf16: bool = True
    overrides: dict[str, Any] = Field(default_factory=dict, description="merged last into the DeepSpeed config")
    comm_timeout_s: float = Field(
        1800, gt=0, description="collectives (and barriers) fail after this long instead of hanging; covers the "
        "longest wait of a rank, e.g. while rank 0 writes an export")


class DataLoaderConfig(_Strict):
    num_workers: int = Field(0, ge=0)
    prefetch_factor: int = Field(2, gt=0)
    persistent_workers: bool = True
    pin_memory: bool | None = Field(None, description="None: on when CUDA is used")


class LoggingConfig(_Strict):
    every_steps: int = Field(1, gt=0)
    tensorboard: bool | None = Field(None, description="None: when tensorboard is installed")
    sample_ids: bool = Field(False, description="write every step's sample ids to metrics.jsonl")


class CheckpointConfig(_Strict):
    every_steps: int | None = Field(None, gt=0, description="None: only at the end")
    keep_last: int = Field(2, gt=0)
    resume: bool = Field(True, description="resume from output_dir/checkpoints/latest when present")
    move_aside: bool = Field(False, description="a new run (resume: false) moves another run's checkpoints and "
                             "metrics.jsonl to output_dir/aside-<time>/ instead of refusing to start")
    export_hf: bool = True
    export_projector: bool | None = Field(None, description="None: on for the pretrain stage")


class TrainConfig(_Strict):
    run_name: str = "parsit"
    output_dir: Path
    seed: int = 0
    stage: Literal["pretrain", "finetune"] = "finetune"
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig = OptimConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    dataloader: DataLoaderConfig = DataLoaderConfig()
    logging: LoggingConfig = LoggingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainConfig:
        problems = []
        if self.optim.epochs is None and self.optim.max_steps is None:
            problems.append("optim: set `epochs` or `max_steps`")
        trainable = self.optim.trainable
        if trainable is not None and len(set(trainable)) != len(trainable):
            problems.append("optim.trainable: a part is listed twice")
        if self.stage == "pretrain" and trainable is not None and set(trainable) != {"projector"}:
            problems.append(
                "optim.trainable: the pretrain stage trains the projector only; "
                "use stage: finetune to train other parts"
            )
        if trainable == []:
            problems.append("optim.trainable is empty: nothing would be trained; list at least one part")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # --- derived values -------------------------------------------------------------------------------
    def trainable_parts(self) -> list[str]:
        if self.optim.trainable is not None:
            return list(self.optim.trainable)
        return ["projector"] if self.stage == "pretrain" else list(PARTS)

    def export_projector(self) -> bool:
        flag = self.checkpoint.export_projector
        return self.stage == "pretrain" if flag is None else flag

    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"


def _resolve_paths(cfg: TrainConfig, base: Path) -> TrainConfig:
    def fix(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = p.expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    cfg.output_dir = fix(cfg.output_dir)
    for b in cfg.data.builds:
        b.path = b.path if isinstance(b.path, str) else fix(b.path)
    cfg.data.cache_dir = fix(cfg.data.cache_dir)
    if cfg.data.tokenizer not in {"qwen3", "bundled:qwen3"}:
        cfg.data.tokenizer = str(fix(Path(cfg.data.tokenizer)))
    m = cfg.model
    m.init_from = fix(m.init_from)
    m.projector_weights = fix(m.projector_weights)
    for tower in (m.vision_tower, m.language_model):
        if tower is not None and tower.path is not None:
            tower.path = fix(tower.path)
    return cfg


def format_validation_error(exc: ValidationError, source: str) -> str:
    """All problems of a config, one line each, with the dotted location of the key."""
    lines = [f"{source}: {exc.error_count()} problem(s) in the training config:"]
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        if isinstance(node, list):
            node = node[int(p)]
        else:
            node = node.setdefault(p, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


# Keys whose values are paths: given on the command line (--set), they are relative to the working
# directory, like any other command-line path; only paths written in the file are relative to the file.
_PATH_KEYS = ("output_dir", "data.builds", "data.cache_dir", "model.init_from", "model.projector_weights",
              "model.vision_tower.path", "model.language_model.path")


def _cwd_paths(key: str, value: Any) -> Any:
    def absolute(v: Any) -> Any:
        from parsit_data.format.fsio import is_uri

        if isinstance(v, str) and is_uri(v):
            return v
        if isinstance(v, str):
            return str(Path(v).expanduser().resolve())
        if isinstance(v, dict) and isinstance(v.get("path"), str):
            return {**v, "path": absolute(v["path"])}
        return v

    if not any(key == k or key.startswith(k + ".") for k in _PATH_KEYS):
        return value
    return [absolute(v) for v in value] if isinstance(value, list) else absolute(value)


def parse_config(data: Any, base: Path, source: str = "config") -> TrainConfig:
    if not isinstance(data, dict):
        raise ParsitError(f"{source}: a training config is a YAML mapping (key: value), not {type(data).__name__}")
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ParsitError(format_validation_error(exc, source)) from None
    return _resolve_paths(cfg, base)


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read, override (``key.sub=value`` with a YAML value) and validate a training config file."""
    path = Path(path)
    if not path.is_file():
        raise ParsitError(f"no training config at {path}: pass --config a YAML file (see examples/train_demo.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParsitError(f"{path} is not valid YAML: {exc}") from None
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ParsitError(f"override {item!r} is not KEY=VALUE (e.g. optim.max_steps=10)")
        if not isinstance(data, dict):
            break
        _set_dotted(data, key.strip(), _cwd_paths(key.strip(), yaml.safe_load(raw)))
    return parse_config(data, path.resolve().parent, source=str(path))


def config_to_json(cfg: TrainConfig) -> dict:
    return json.loads(cfg.model_dump_json())


SCHEMA_TITLE = "Parsit training config"


def json_schema() -> dict:
    return schema_document(TrainConfig, SCHEMA_TITLE)


def schema_json() -> str:
    """The schema as ``schemas/train_config.schema.json`` holds it."""
    return schema_text(TrainConfig, SCHEMA_TITLE)


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    return _write_schema(TrainConfig, path, SCHEMA_TITLE)
