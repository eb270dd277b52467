"""The refactor into parsit_data.format changed no output byte but the documented shard metadata.

The fixture holds the digests of builds made by commit aa7e308 (see tests/data/build_digest.py for how
it was produced and what the digest leaves out). Each variant is built again here and must match.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data.build_digest import VARIANTS, build_digest, build_variant

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "demo_build_digest.json").read_text())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_build_bytes_match_the_pre_refactor_build(variant, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # relative input paths, as the fixture's builds had
    got = build_digest(build_variant(variant, tmp_path / variant))
    want = FIXTURE["variants"][variant]
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == want[key], f"{variant}: {key} differs from the build of commit {FIXTURE['commit']}"
