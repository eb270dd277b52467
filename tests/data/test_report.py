"""The data quality report against a build whose contents are known record by record.

Every number the report shows is checked against either the hand-written fixture (counts, reasons,
duplicates) or an independent computation over the shards read back with pyarrow (quantiles, shares).
"""

from __future__ import annotations

import base64
import json
import re
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

import jsonschema  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from parsit_data.build import build  # noqa: E402
from parsit_data.config import BuildConfig  # noqa: E402
from parsit_data.errors import ParsitError  # noqa: E402
from parsit_data.report import Report, regenerate  # noqa: E402
from parsit_data.report.model import report_json_schema  # noqa: E402
from parsit_data.format import read_shard  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _conv(q: str, a: str, *more: str) -> list[dict]:
    turns = [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    for i, t in enumerate(more):
        turns.append({"from": "human" if i % 2 == 0 else "gpt", "value": t})
    return turns


def make_inputs(root: Path) -> Path:
    """Two sources with known contents; returns the YAML mixture.

    alpha (JSONL, all 9 lines): kept a1, a2 (2 rounds), a3 (64x48 image), a4 (same content as a1);
    quarantined: line 5 invalid_json, a6 unknown_role, a7 image_missing, a1 again duplicate_id, a9 overlong.
    beta (JSON list, first:3 of 4): kept b0 (100x200 image), b1, b2 (same content as a2); b3 not selected.
    """
    images = root / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(images / "small.png")
    Image.new("RGB", (100, 200), (30, 30, 200)).save(images / "tall.png")
    alpha = [
        json.dumps({"id": "a1", "conversations": _conv("Say hi.", "Hi.")}),
        json.dumps({"id": "a2", "conversations": _conv("Count to three.", "One, two, three.", "And back?",
                                                        "Three, two, one.")}),
        json.dumps({"id": "a3", "image": "small.png", "conversations": _conv("<image>\nWhat colour?", "Red.")}),
        json.dumps({"id": "a4", "conversations": _conv("Say hi.", "Hi.")}),
        '{"id": "a5", "conversations": [',
        json.dumps({"id": "a6", "conversations": [{"from": "robot", "value": "beep"}, {"from": "gpt", "value": "x"}]}),
        json.dumps({"id": "a7", "image": "nope.png", "conversations": _conv("<image>\nWhat?", "A page.")}),
        json.dumps({"id": "a1", "conversations": _conv("Another record reusing id a1.", "Yes.")}),
        json.dumps({"id": "a9", "conversations": _conv("Repeat: " + "lorem ipsum " * 60, "ok")}),
    ]
    (root / "alpha.jsonl").write_text("\n".join(alpha) + "\n")
    beta = [
        {"id": "b0", "image": "tall.png", "conversations": _conv("<image>\nWhat colour?", "Blue.")},
        {"id": "b1", "conversations": _conv("Name a prime.", "Seven.")},
        {"id": "b2", "conversations": _conv("Count to three.", "One, two, three.", "And back?", "Three, two, one.")},
        {"id": "b3", "conversations": _conv("Not selected.", "Right.")},
    ]
    (root / "beta.json").write_text(json.dumps(beta))
    mix = root / "mix.yaml"
    mix.write_text("datasets:\n  - json_path: alpha.jsonl\n    sampling_strategy: all\n"
                   "  - json_path: beta.json\n    sampling_strategy: first:3\n")
    return mix


def config(root: Path, out: Path, **kw) -> BuildConfig:
    # 28 px / 14 px patches: 4 visual tokens per image keeps every length below 128 (exact bins).
    return BuildConfig(inputs=[str(root / "mix.yaml")], image_root=str(root / "images"), out=str(out),
                       max_length=100, image_size=28, patch_size=14, **kw)


@pytest.fixture(scope="module")
def known(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("known")
    make_inputs(root)
    build(config(root, root / "out"))
    return root


def rows_of(out: Path) -> list[dict]:
    m = json.loads((out / "manifest.json").read_text())
    rows = []
    for s in m["shards"]:
        rows += read_shard(out / s["path"]).to_pylist()
    return rows


def load(out: Path) -> Report:
    return Report.model_validate_json((out / "report.json").read_text())


def nearest_rank(values, q):
    return float(np.quantile(np.asarray(values), q, method="inverted_cdf"))


def test_counts_reasons_and_examples(known):
    r = load(known / "out")
    by = {s.name: s for s in r.sources}
    assert (by["alpha"].read, by["alpha"].kept, by["alpha"].quarantined) == (9, 4, 5)
    assert (by["beta"].read, by["beta"].kept, by["beta"].quarantined) == (3, 3, 0)
    assert (r.summary.read, r.summary.kept, r.summary.quarantined) == (12, 7, 5)
    assert r.summary.quarantine_rate == pytest.approx(5 / 12, abs=1e-6)
    assert by["alpha"].quarantined_by_reason == {"duplicate_id": 1, "image_missing": 1, "invalid_json": 1,
                                                 "overlong": 1, "unknown_role": 1}
    reasons = {x.reason: x for x in r.reasons}
    assert set(reasons) == set(by["alpha"].quarantined_by_reason)
    assert all(x.count == 1 and x.by_source == {"alpha": 1} and x.help for x in r.reasons)
    assert reasons["invalid_json"].example.sample_id is None and reasons["invalid_json"].example.line == 5
    assert reasons["unknown_role"].example.sample_id == "a6" and "robot" in reasons["unknown_role"].example.detail
    assert reasons["image_missing"].example.sample_id == "a7" and "nope.png" in reasons["image_missing"].example.detail
    assert reasons["duplicate_id"].example.line == 8
    assert reasons["overlong"].example.sample_id == "a9" and "100" in reasons["overlong"].example.detail
    assert r.summary.overlong_dropped == 1 and r.summary.truncated == 0 and r.summary.over_max_length == 1
    # the images of kept rows: a3 (64x48) and b0 (100x200), 4 visual tokens each
    assert r.summary.images == 2 and r.overall["image_tokens"].quantiles.max == 4
    assert [(b.lo, b.count) for b in r.overall["image_width"].bins] == [(64, 1), (100, 1)]
    assert r.overall["image_height"].quantiles.min == 48 and r.overall["image_height"].quantiles.max == 200
    assert [(b.lo, b.count) for b in r.overall["images"].bins] == [(0, 5), (1, 2)]


def test_length_quantiles_match_the_shards(known):
    r = load(known / "out")
    rows = rows_of(known / "out")
    assert len(rows) == 7
    columns = {"length": [x["length"] for x in rows], "text_tokens": [len(x["input_ids"]) for x in rows],
               "supervised_tokens": [x["supervised_tokens"] for x in rows], "turns": [x["num_turns"] for x in rows]}
    assert max(columns["length"]) < 128  # all in exact bins: quantiles must be exact
    for metric, values in columns.items():
        q = r.overall[metric].quantiles
        assert q.n == len(values)
        assert (q.p50, q.p90, q.p99, q.max, q.min) == tuple(
            nearest_rank(values, p) for p in (0.5, 0.9, 0.99, 1.0, 0.0)), metric
        assert q.mean == pytest.approx(np.mean(values), abs=1e-4)
    # per source, too
    alpha = [x["length"] for x in rows if x["source"] == "alpha"]
    qa = next(s for s in r.sources if s.name == "alpha").distributions["length"].quantiles
    assert (qa.p50, qa.max) == (nearest_rank(alpha, 0.5), max(alpha))
    shares = [x["supervised_tokens"] / len(x["input_ids"]) for x in rows]
    qs = r.overall["supervised_share"].quantiles
    assert 0 <= qs.p50 - nearest_rank(shares, 0.5) <= 0.01 and qs.max == pytest.approx(max(shares))
    assert r.summary.zero_supervised_rows == 0
    assert r.summary.tokens == sum(columns["length"])


def test_duplicates_mixture_and_verdict(known):
    r = load(known / "out")
    d = r.duplicates
    # a4 repeats a1 (same source), b2 repeats a2 (across sources)
    assert (d.rows, d.distinct, d.duplicate_rows, d.groups, d.cross_source_groups) == (7, 5, 2, 2, 1)
    assert [sorted(g.samples) for g in d.examples] == [["alpha/a1", "alpha/a4"], ["alpha/a2", "beta/b2"]]
    assert {s.name: s.duplicate_rows for s in r.sources} == {"alpha": 1, "beta": 0}
    rows = rows_of(known / "out")
    tokens = {s: sum(x["length"] for x in rows if x["source"] == s) for s in ("alpha", "beta")}
    mix = {m.source: m for m in r.mixture}
    assert mix["alpha"].requested_share == pytest.approx(9 / 12, abs=1e-6)
    assert mix["beta"].sampling == "first:3" and mix["beta"].requested_samples == 3
    assert mix["alpha"].achieved_samples_share == pytest.approx(4 / 7, abs=1e-6)
    assert mix["beta"].achieved_tokens_share == pytest.approx(tokens["beta"] / sum(tokens.values()), abs=1e-6)
    assert mix["alpha"].delta_samples_share == pytest.approx(4 / 7 - 9 / 12, abs=1e-5)
    # 42% quarantined and 29% duplicate copies: both fail, so the verdict is no-go
    status = {c.name: c.status for c in r.checks}
    assert status["quarantine rate"] == "fail" and status["exact duplicates"] == "fail"
    assert status["rows with no supervised token"] == "ok" and status["lengths within --max-length"] == "ok"
    assert status["accounting (read = kept + quarantined)"] == "ok"
    assert r.summary.verdict == "no-go"


def test_template_example_is_decoded_from_labels(known):
    r = load(known / "out")
    t = r.template
    assert (t.name, t.label_policy, t.system_prompt) == ("qwen_1_5", "native", "You are a helpful assistant.")
    assert r.tokenizer["pad_token"] == "<|endoftext|>" and r.tokenizer["pad_token_id"] == 151643
    ex = {e.source: e for e in t.examples}
    # the first row with an image is preferred: a3 in alpha, b0 in beta
    assert ex["alpha"].sample_id == "a3" and ex["beta"].sample_id == "b0"
    sup = [s.text for s in ex["alpha"].spans if s.supervised]
    assert sup == ["Red.<|im_end|>"]
    text = "".join(s.text for s in ex["alpha"].spans)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
                    "What colour?<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n")


def test_report_json_matches_its_schema(known):
    schema = json.loads((REPO / "schemas" / "report.schema.json").read_text())
    assert schema == report_json_schema(), (
        "schemas/report.schema.json is stale: python -m parsit_data.report.model > schemas/report.schema.json")
    jsonschema.validate(json.loads((known / "out" / "report.json").read_text()), schema)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()
        self.headings: list[str] = []
        self._h = None

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for k, v in attrs:
            if k in ("src", "href", "srcset", "action", "data", "poster", "style") and v:
                self.refs.append((tag, k, v))
        if tag == "h2":
            self._h = ""

    def handle_data(self, data):
        if self._h is not None:
            self._h += data

    def handle_endtag(self, tag):
        if tag == "h2" and self._h is not None:
            self.headings.append(self._h.strip())
            self._h = None


def test_html_is_self_contained(known):
    html = (known / "out" / "report.html").read_text()
    p = _Refs()
    p.feed(html)
    assert p.headings[:3] == ["Summary", "Sources", "Quarantine reasons"]
    imgs = [v for t, k, v in p.refs if t == "img" and k == "src"]
    assert len(imgs) >= 8 and all(v.startswith("data:image/svg+xml;base64,") for v in imgs)
    for v in imgs:  # each figure is an SVG document that references nothing outside itself
        svg = base64.b64decode(v.split(",", 1)[1]).decode()
        assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
        assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', svg)), v[:80]
        assert "<script" not in svg and "@import" not in svg and "url(http" not in svg
    for tag, attr, value in p.refs:
        if attr in ("src", "href"):
            assert value.startswith(("data:", "#")), (tag, attr, value[:80])
    assert not {"script", "link", "iframe", "object", "embed"} & p.tags
    lowered = html.lower()
    assert "http://" not in lowered and "https://" not in lowered and "@import" not in lowered
    assert "url(" not in lowered


def test_regenerate_from_parts_without_rebuilding(known, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(known / "out", out)
    built = (out / "report.json").read_bytes()
    (out / "report.json").unlink()
    (out / "report.html").unlink()
    regenerate(out)
    assert (out / "report.json").read_bytes() == built and (out / "report.html").is_file()
    # The shards are not needed: only duplicate examples lose their sample ids (partition/row instead).
    shutil.rmtree(out / "shards")
    again = regenerate(out)
    ref = load(known / "out")
    assert again.summary == ref.summary and again.overall == ref.overall and again.reasons == ref.reasons
    assert all("partition" in s for g in again.duplicates.examples for s in g.samples)
    # Missing per-partition statistics: a clear error that says what to do.
    (out / "_parts" / "part-00000.json").unlink()
    with pytest.raises(ParsitError, match="run the same `parsit-data build` again"):
        regenerate(out)
    with pytest.raises(ParsitError, match="not a finished build"):
        regenerate(tmp_path)


def test_same_report_whatever_the_partitioning(known, tmp_path):
    """Statistics are merged per partition: shard_rows=2 (7 partitions) gives the same report."""
    build(config(known, tmp_path / "small", shard_rows=2))
    a = json.loads((known / "out" / "report.json").read_text())
    b = json.loads((tmp_path / "small" / "report.json").read_text())
    for r in (a, b):
        for k in ("build", "config_hash"):
            r.pop(k)
        r["summary"].pop("shards"), r["summary"].pop("shard_bytes")
    assert a == b


def test_cli_report_command(known, tmp_path):
    from typer.testing import CliRunner

    from parsit_data.cli.main import app

    out = tmp_path / "c"
    shutil.copytree(known / "out", out)
    (out / "report.html").unlink()
    res = CliRunner().invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert "NO-GO" in res.output and "7 kept, 5 quarantined of 12 read" in res.output
    assert (out / "report.html").is_file()


def test_templates_mask_report_is_shown_when_the_manifest_has_one(known, tmp_path):
    """The templates' manifest block carries {"rendered": text with supervised runs in ⟦ ⟧, ...}."""
    out = tmp_path / "m"
    shutil.copytree(known / "out", out)
    m = json.loads((out / "manifest.json").read_text())
    m["template"]["mask_report"] = {"record": {"conversations": []}, "tokens": 12, "supervised_tokens": 3,
                                    "rendered": "<|im_start|>user\n<image>\nQ?<|im_end|>\n<|im_start|>assistant\n"
                                                "⟦A & B.<|im_end|>⟧\n"}
    (out / "manifest.json").write_text(json.dumps(m))
    r = regenerate(out)
    assert r.template.manifest_example["supervised_tokens"] == 3
    html = (out / "report.html").read_text()
    assert '<span class="sup">A &amp; B.&lt;|im_end|&gt;</span>' in html
    assert "mask report" in html and "⟦" not in html


def test_a_build_that_keeps_nothing_still_reports(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"id": "x", "conversations": [\n' + json.dumps({"id": "y", "conversations": []}) + "\n")
    build(BuildConfig(inputs=[str(src)], out=str(tmp_path / "out")))
    r = load(tmp_path / "out")
    assert (r.summary.read, r.summary.kept, r.summary.verdict) == (2, 0, "no-go")
    assert {c.name: c.status for c in r.checks}["rows kept"] == "fail"
    assert r.overall["length"].quantiles.n == 0 and r.overall["length"].quantiles.p50 is None
    assert "no data" in (tmp_path / "out" / "report.html").read_text()
