"""Helpers of the trainer tests: real builds made by ``parsit_data.build`` from pillow images.

Geometry is tiny (image_size 28, patch 14 -> 4 visual tokens per crop) so a build takes well under a
second, but everything else is real: the Qwen3 tokenizer, the ChatML template, Arrow shards, manifest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
               "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

from PIL import Image  # noqa: E402

from parsit_data.build import build  # noqa: E402
from parsit_data.config import BuildConfig  # noqa: E402
from parsit_data.format import bundled_qwen3_tokenizer  # noqa: E402

QWEN_IMAGE_PAD = 151655  # <|image_pad|>
QWEN_EOS = 151645  # <|im_end|>
QWEN_PAD = 151643  # <|endoftext|>

_WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def write_records(folder: Path, name: str, n_image: int, n_text: int, image_sizes=((40, 30), (30, 50), (64, 64))) -> Path:
    """A JSONL of ``n_image`` one-image records and ``n_text`` text-only ones, of varied lengths."""
    img_dir = folder / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_image + n_text):
        words = " ".join(_WORDS[(i + k) % len(_WORDS)] for k in range(1 + (i * 7) % 23))
        rec = {"id": f"{name}-{i:05d}"}
        if i < n_image:
            w, h = image_sizes[i % len(image_sizes)]
            rel = f"{name}-{i:05d}.png"
            Image.new("RGB", (w, h), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)).save(img_dir / rel)
            rec["image"] = rel
            rec["conversations"] = [{"from": "human", "value": f"<image>\nWhat is in picture {i}?"},
                                    {"from": "gpt", "value": f"Picture {i} shows {words}."}]
        else:
            rec["conversations"] = [{"from": "human", "value": f"Say something about {i}."},
                                    {"from": "gpt", "value": f"Text {i}: {words}."}]
        lines.append(json.dumps(rec))
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_build(folder: Path, name: str, n_image: int = 24, n_text: int = 16, **options) -> Path:
    """Run the real builder; returns the build directory."""
    src = write_records(folder / "src", name, n_image, n_text)
    out = folder / name
    cfg = BuildConfig(inputs=[str(src)], out=str(out), tokenizer=str(bundled_qwen3_tokenizer()),
                      image_root=str(folder / "src" / "images"), image_size=28, patch_size=14,
                      **{"shard_rows": 16, **options})
    build(cfg)
    return out


def open_loader(build_dirs, weights=None, *, tokenizer_path="qwen3", image_token_id=QWEN_IMAGE_PAD, batch_size=2,
                max_length=None, seed=0, rank=0, world_size=1, num_workers=0, prefetch_factor=4,
                persistent_workers=True, pin_memory=None, verify_checksums=True, cache_dir=None, cache_limit=None,
                default_cache_dir=None, **spec):
    """(loader, sampler) the trainer's way (build view, config sections, BatchSpec) from test-sized arguments:
    ``spec`` holds the DataConfig fields (group_by_length, pack_length, ...) and the BatchSpec ones."""
    from parsit_train.config import DataConfig, DataLoaderConfig
    from parsit_train.data import BatchSpec, build_dataloader, open_view

    dirs = [build_dirs] if isinstance(build_dirs, (str, Path)) else list(build_dirs)
    data_keys = {"group_by_length", "pack_length", "max_images_per_pack", "pack_window", "shuffle_window_shards"}
    data = DataConfig(builds=[str(d) for d in dirs], **{k: v for k, v in spec.items() if k in data_keys and v is not None})
    batch = {k: v for k, v in spec.items() if k not in data_keys}
    view = open_view(dirs, tokenizer_path, weights=weights, max_length=max_length, verify_checksums=verify_checksums,
                     cache_dir=cache_dir, cache_limit=cache_limit, default_cache_dir=default_cache_dir)
    loader = build_dataloader(view, data, DataLoaderConfig(num_workers=num_workers, prefetch_factor=prefetch_factor,
                                                          persistent_workers=persistent_workers, pin_memory=pin_memory),
                              BatchSpec(batch_size=batch_size, image_token_id=image_token_id, seed=seed, rank=rank,
                                        world_size=world_size, **batch))
    return loader, loader.sampler
