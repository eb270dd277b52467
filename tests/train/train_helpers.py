"""Shared helpers of the trainer tests: a small real build (pillow images, the real builder) and a tiny config.

Not a test module (no ``test_`` prefix): imported by tests/train/test_train*.py and test_model*.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
               "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "yellow": (230, 220, 40)}
IMAGE_SIZE, PATCH_SIZE = 28, 14

TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE}
TINY_LM = {"vocab_size": 151680, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "tie_word_embeddings": False,
           "max_position_embeddings": 512}


def make_build(root: Path, n: int = 16, n_text: int = 0) -> Path:
    """Build n demo-like records (one image each: 'what colour?' -> the colour) and n_text text-only ones
    (ids ``txt-NNN``) with the real builder."""
    from PIL import Image

    from parsit_data.build import build
    from parsit_data.config import BuildConfig

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = list(COLORS)
    records = []
    for i in range(n):
        color = names[i % len(names)]
        Image.new("RGB", (40 + i, 32), COLORS[color]).save(images / f"img{i}.png")
        records.append({"id": f"rec-{i:03d}", "image": f"img{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is this picture?"},
            {"from": "gpt", "value": f"The picture is {color}."}]})
    for i in range(n_text):
        color = names[i % len(names)]
        records.append({"id": f"txt-{i:03d}", "conversations": [
            {"from": "human", "value": f"Which colour comes after {names[i % len(names) - 1]}?"},
            {"from": "gpt", "value": f"{color}."}]})
    src = root / "records.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = root / "build"
    build(BuildConfig(inputs=[str(src)], out=str(out), image_root=str(images), image_size=IMAGE_SIZE,
                      patch_size=PATCH_SIZE, max_length=256, shard_rows=8))
    return out


def tiny_config(build_dir: Path, out: Path, **over) -> dict:
    """A training config dict for the tiny model; ``over`` merges into top-level sections."""
    cfg = {
        "run_name": "tiny",
        "output_dir": str(out),
        "seed": 0,
        "stage": "finetune",
        "data": {"builds": [str(build_dir)]},
        "model": {"vision_tower": {"config": dict(TINY_VISION)}, "language_model": {"config": dict(TINY_LM)},
                  "vision_feature_layer": -1},
        "optim": {"lr": {"projector": 1e-3, "vision_tower": 1e-3, "language_model": 1e-3},
                  "micro_batch_size": 2, "max_steps": 4, "schedule": "constant"},
        "deepspeed": {"zero_stage": 2, "bf16": False},
        "logging": {"tensorboard": False, "sample_ids": True},
        "checkpoint": {"export_hf": False},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def free_port() -> int:
    """A free loopback port for a test's rendezvous (MASTER_PORT)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_metrics(out: Path) -> list[dict]:
    """The lines of a run's ``metrics.jsonl``."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
