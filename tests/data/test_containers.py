"""The same records as LLaVA JSONL, chat-messages JSONL, OneVision-style Parquet, HF-messages Parquet, a
``datasets.save_to_disk`` folder and WebDataset tars build to identical rows (ids, labels, visual token
counts, image pixels), on the local engine and on Ray with 2 workers; each source's format is reported."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pytest
from PIL import Image

from parsit_data.format import read_shard

from containers_support import N_RECORDS, write_all
from validate_helpers import check_accounting, run_build

pytestmark = pytest.mark.timeout(240)
FORMATS = {"llava_jsonl": "jsonl", "messages_jsonl": "jsonl", "onevision_parquet": "parquet",
           "hf_parquet": "parquet", "save_to_disk": "arrow", "webdataset": "webdataset"}


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    d = tmp_path_factory.mktemp("containers")
    return d, write_all(d)


def _rows(out, manifest) -> dict[str, dict]:
    rows = {}
    for s in manifest["shards"]:
        for r in read_shard(out / s["path"]).to_pylist():
            pixels = [Image.open(io.BytesIO(b)).convert("RGB").tobytes() for b in r["images"]]
            rows[r["sample_id"]] = {k: r[k] for k in ("input_ids", "labels", "num_image_tokens", "length",
                                                       "image_sizes", "supervised_tokens")} | {"pixels": pixels}
    return rows


@pytest.fixture(scope="module")
def local_builds(forms):
    d, inputs = forms
    out = {}
    for name, paths in inputs.items():
        o = d / f"out-{name}"
        manifest = run_build(paths, o, image_root=str(d / "images"), shard_rows=4)
        check_accounting(manifest, o)
        out[name] = (o, manifest)
    return out


def test_every_container_and_spelling_builds_the_same_rows(local_builds):
    ref_out, ref_manifest = local_builds["llava_jsonl"]
    ref = _rows(ref_out, ref_manifest)
    assert len(ref) == N_RECORDS and sum(len(r["pixels"]) for r in ref.values()) > 5
    assert any(-200 in r["input_ids"] for r in ref.values())
    for name, (out, manifest) in local_builds.items():
        assert manifest["totals"]["quarantined"] == 0, (name, (out / "quarantine.jsonl").read_text()[:500])
        assert _rows(out, manifest) == ref, name


def test_each_source_reports_its_format(local_builds):
    for name, (out, manifest) in local_builds.items():
        (src,) = manifest["sources"]
        assert src["format"] == FORMATS[name] and src["read"] == N_RECORDS
        report = json.loads((out / "report.json").read_text())
        assert [s["format"] for s in report["sources"]] == [FORMATS[name]]
        assert f">{FORMATS[name]}<" in (out / "report.html").read_text()


@pytest.mark.timeout(300)
def test_ray_with_two_workers_builds_the_same_bytes_from_every_container(forms, local_builds):
    """One build of all six forms on Ray (2 workers) against the same build on the local engine."""
    d, inputs = forms
    paths = [p for ps in inputs.values() for p in ps]
    common = dict(image_root=str(d / "images"), shard_rows=4)
    local = run_build(paths, d / "all-local", **common)
    ray = run_build(paths, d / "all-ray", engine="ray", workers=2, **common)
    files = lambda o: {p.relative_to(o).as_posix(): p.read_bytes() for p in sorted(o.rglob("*"))  # noqa: E731
                       if p.is_file() and p.name not in ("manifest.json", "report.html")}
    assert files(d / "all-local") == files(d / "all-ray")
    strip = lambda m: {k: v for k, v in m.items() if k != "timing"}  # noqa: E731
    assert strip(local) == strip(ray)
    assert [s["read"] for s in ray["sources"]] == [N_RECORDS] * 6
