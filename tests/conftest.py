"""Shared fixtures: offline environment, the bundled tokenizer, and a demo build made once per session."""

from __future__ import annotations

import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
               "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
               # The machine is shared: Ray's memory monitor would kill our workers for another process's memory.
               "RAY_memory_monitor_refresh_ms": "0"}.items():
    os.environ.setdefault(_k, _v)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from parsit_data.build import build  # noqa: E402
from parsit_data.config import BuildConfig  # noqa: E402
from parsit_data.format import bundled_qwen3_tokenizer  # noqa: E402
from parsit_data.tokenizer import load_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "demo"


@pytest.fixture(scope="session")
def qwen_path() -> Path:
    return bundled_qwen3_tokenizer()


@pytest.fixture(scope="session")
def qwen(qwen_path):
    return load_tokenizer(qwen_path)


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory) -> Path:
    """The README's demo build (bundled data, default options), made once for the session."""
    out = tmp_path_factory.mktemp("demo") / "build"
    build(BuildConfig(inputs=[str(DEMO / "mixture.yaml")], image_root=str(DEMO / "images"), out=str(out),
                      shard_rows=16))
    return out


@pytest.fixture
def no_ray_left():
    """Whatever the test did, no Ray driver connection is left open after it."""
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()
