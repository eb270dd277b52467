"""The same records as LLaVA JSONL, chat-messages JSONL, OneVision-style Parquet, HF-messages Parquet, a
``datasets.save_to_disk`` folder and WebDataset tars build to identical rows (ids, labels, visual token
counts, image pixels), on the local engine and on Ray with 2 workers; each source's format is reported."""

from __future__ import annotations

import io
import json
from pathlib import Path

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


@pytest.mark.parametrize("form", ["onevision_parquet", "save_to_disk", "webdataset"])
def test_a_table_partition_carries_keys_and_its_worker_reads_the_rows(forms, form):
    """The driver reads ids only (no image bytes cross to the workers in the partition); what a worker
    reads for a partition is exactly what the streaming reader yields for those rows, sampling included.
    Tar shards too: a partition of samples is read by its worker from the first sample's byte offset."""
    from parsit_data.partition import iter_partitions
    from parsit_data.sources import expand_inputs, iter_source
    from parsit_data.sources.raw import EmbeddedImage

    d, inputs = forms
    (spec,) = expand_inputs(inputs[form])
    parts = list(iter_partitions([spec], 4))
    assert [len(p.items) for p in parts] == [4, 4, 4, 2]
    assert all(set(k.value) <= {"id"} and k.at is not None for p in parts for k in p.items)
    def plain(r):  # an embedded image compared by where it is and its bytes
        return (r.position, r.kind, r.member, r.rejection,
                json.dumps(r.value, default=lambda e: [e.where, e.data.hex(), e.name], sort_keys=True))

    got = [r for p in parts for r in p.records()]
    assert [plain(r) for r in got] == [plain(r) for r in iter_source(spec)]
    embedded = [x for r in got for x in (r.value.get("images") or [r.value.get("image")])]
    assert sum(isinstance(x, EmbeddedImage) for x in embedded) == sum(i % 4 != 1 for i in range(N_RECORDS))
    spec.sampling, spec.seed = "random:50%", 7
    keys = [k for p in iter_partitions([spec], 3) for k in p.items]
    assert [k.position for k in keys] == [r.position for r in iter_source(spec)] and len(keys) == N_RECORDS // 2


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("no_ray_left")
def test_tar_shards_on_ray_with_two_workers_are_read_by_the_workers_and_resume(forms, tmp_path):
    """Tar shards as partitions of keys on Ray (2 workers): the same bytes as the local engine, partitions
    that straddle two shards included; an interrupted Ray build resumes from the partitions it finished."""
    from parsit_data.build import build
    from parsit_data.config import BuildConfig
    from parsit_data.format import MANIFEST_NAME, part_path
    from parsit_data.partition import iter_partitions
    from parsit_data.sources import expand_inputs
    from validate_helpers import fast_builds

    d, inputs = forms
    common = dict(image_root=str(d / "images"), shard_rows=3)
    parts = list(iter_partitions(expand_inputs(inputs["webdataset"]), 3))
    assert [sorted({k.at[0] for k in p.items}) for p in parts] == [[0], [0], [0, 1], [1], [1]]
    assert all(set(k.value) <= {"id"} for p in parts for k in p.items)  # no image bytes travel to a worker
    local = run_build(inputs["webdataset"], tmp_path / "local", **common)
    ray = run_build(inputs["webdataset"], tmp_path / "ray", engine="ray", workers=2, **common)
    files = lambda o: {p.relative_to(o).as_posix(): p.read_bytes() for p in sorted(o.rglob("*"))  # noqa: E731
                       if p.is_file() and p.name not in ("manifest.json", "report.html")}
    assert files(tmp_path / "local") == files(tmp_path / "ray")
    strip = lambda m: {k: v for k, v in m.items() if k != "timing"}  # noqa: E731
    assert strip(local) == strip(ray) and ray["totals"]["kept"] == N_RECORDS
    (tmp_path / "ray" / MANIFEST_NAME).unlink()  # interrupted: no manifest, partition 2 (two shards) unfinished
    part_path(tmp_path / "ray", 2).unlink()
    reused = []
    with fast_builds():
        again = build(BuildConfig(inputs=inputs["webdataset"], out=str(tmp_path / "ray"), engine="ray", workers=2,
                                  **common), on_progress=lambda r: reused.append(r.reused)).model_dump(mode="json")
    assert sorted(reused) == [False] + [True] * 4
    assert files(tmp_path / "ray") == files(tmp_path / "local") and strip(again) == strip(local)


def test_a_parquet_build_resumes_from_the_partitions_it_finished(forms, tmp_path):
    from parsit_data.format import MANIFEST_NAME, part_path

    d, inputs = forms
    common = dict(image_root=str(d / "images"), shard_rows=3)
    first = run_build(inputs["hf_parquet"], tmp_path / "out", **common)
    before = {p.name: p.read_bytes() for p in sorted((tmp_path / "out" / "shards").iterdir())}
    (tmp_path / "out" / MANIFEST_NAME).unlink()  # an interrupted build: no manifest, partition 2 unfinished
    part_path(tmp_path / "out", 2).unlink()
    from validate_helpers import fast_builds
    from parsit_data.build import build
    from parsit_data.config import BuildConfig

    reused = []
    with fast_builds():
        again = build(BuildConfig(inputs=inputs["hf_parquet"], out=str(tmp_path / "out"), **common),
                      on_progress=lambda r: reused.append(r.reused)).model_dump(mode="json")
    assert sorted(reused) == [False] + [True] * (len(first["shards"]) - 1)
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "out" / "shards").iterdir())} == before
    assert {k: v for k, v in again.items() if k != "timing"} == {k: v for k, v in first.items() if k != "timing"}


def test_a_mixture_takes_any_container_and_every_count_goes_through_the_readers(forms, tmp_path):
    """json_path may name a Parquet file, a save_to_disk folder or a tar folder; the progress estimate,
    validate and the build agree on how many records each sampling strategy reads."""
    from parsit_data.images import ImageOptions
    from parsit_data.precheck import precheck
    from parsit_data.sources import estimate_total, expand_inputs
    from parsit_data.validate import ValidationOptions

    d, inputs = forms
    mix = tmp_path / "mix.yaml"
    mix.write_text("datasets:\n"
                   f"  - {{json_path: {inputs['onevision_parquet'][0]}, sampling_strategy: 'first:50%'}}\n"
                   f"  - {{json_path: {inputs['save_to_disk'][0]}, sampling_strategy: 'end:3'}}\n"
                   f"  - {{json_path: {inputs['hf_parquet'][0]}, sampling_strategy: 'random:5'}}\n")
    specs = expand_inputs([mix])
    assert [s.format for s in specs] == ["parquet", "arrow", "parquet"]
    assert estimate_total(specs) == 7 + 3 + 5
    manifest = run_build([mix], tmp_path / "out", image_root=str(d / "images"))
    assert [s["read"] for s in manifest["sources"]] == [7, 3, 5]
    # the forms hold the same ids: a later copy is a duplicate, wherever it comes from
    assert {r for s in manifest["sources"] for r in s["quarantined"]} <= {"duplicate_id"}
    v = precheck([mix], vopts=ValidationOptions(), iopts=ImageOptions(root=d / "images"))
    assert [(s.read, s.kept, dict(s.quarantined)) for s in v.stats.sources.values()] == \
        [(s["read"], s["kept"], s["quarantined"]) for s in manifest["sources"]]
    ids = [r["sample_id"] for s in manifest["shards"] for r in read_shard(tmp_path / "out" / s["path"]).to_pylist()]
    assert ids[:7] == [f"r{i:02d}" for i in range(7)] and ids[7:10] == ["r11", "r12", "r13"]


def test_containers_are_detected_from_the_path(forms, tmp_path):
    """A glob or a folder of Parquet files is one source (its files in name order); a DatasetDict folder
    is refused with the names of its splits; a file's sha256 is still the source's for one file."""
    import shutil

    import datasets

    from parsit_data.errors import ParsitError
    from parsit_data.format import sha256_file
    from parsit_data.sources import expand_inputs

    d, inputs = forms
    (tmp_path / "pq").mkdir()
    for name in ("train-00001.parquet", "train-00000.parquet"):
        shutil.copy(inputs["onevision_parquet"][0], tmp_path / "pq" / name)
    (g,) = expand_inputs([str(tmp_path / "pq" / "train-*.parquet")])
    (f,) = expand_inputs([tmp_path / "pq"])
    assert g.format == f.format == "parquet" and g.name == "train"
    assert [p.name for p in g.files] == [p.name for p in f.files] == ["train-00000.parquet", "train-00001.parquet"]
    (one,) = expand_inputs(inputs["onevision_parquet"])
    assert one.sha256 == sha256_file(Path(inputs["onevision_parquet"][0]))
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"id": "x"}]),
                          "test": datasets.Dataset.from_list([{"id": "y"}])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ParsitError, match="DatasetDict.*test, train"):
        expand_inputs([tmp_path / "dd"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParsitError, match="no .parquet"):
        expand_inputs([tmp_path / "empty"])
