"""Fixtures of the trainer tests (helpers in ``train_support``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from train_support import make_build

from parsit_data.format import bundled_qwen3_tokenizer


@pytest.fixture(scope="session")
def tok_path() -> Path:
    return bundled_qwen3_tokenizer()


@pytest.fixture(scope="session")
def builds(tmp_path_factory) -> dict[str, Path]:
    """Two read-only builds (mixed image/text, several shards each). Copy before modifying."""
    root = tmp_path_factory.mktemp("builds")
    return {
        "a": make_build(root, "a", n_image=24, n_text=16),
        "b": make_build(root, "b", n_image=6, n_text=14, shard_rows=8),
    }


@pytest.fixture
def build_copy(builds, tmp_path):
    """A private copy of build ``a`` that a test may damage."""
    dst = tmp_path / "a"
    shutil.copytree(builds["a"], dst)
    return dst
