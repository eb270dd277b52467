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


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a loopback port for the whole session (see tests/s3_support.py)."""
    from s3_support import start_moto

    server = start_moto()
    yield server
    server.server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """AWS_* variables pointing at the session's moto server, and a fresh bucket: (server, bucket)."""
    from s3_support import CREDENTIALS

    for k, v in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_server.endpoint}.items():
        monkeypatch.setenv(k, v)
    return s3_server, s3_server.new_bucket()
