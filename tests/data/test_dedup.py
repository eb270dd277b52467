"""Near duplicates and benchmark contamination (issue 21) on a planted set: near copies (JPEG re-encode,
resize, 2% crop, one-word text edits), eval leaks (an image, a question), and hard negatives (other images
of one document / chart / screenshot template, the same image with another conversation, the same
conversation with another image, a generic eval question). Precision and recall are computed from the
build's own outputs; both engines, 1 and 2 Ray workers and a killed-and-resumed build give the same bytes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from parsit_data.build import build
from parsit_data.config import BuildConfig
from parsit_data.dedup.index import hamming
from parsit_data.dedup.signatures import VIEWS, phash, text_signature
from parsit_data.format import read_shard

from dedup_support import COPIES, KINDS, decode, planted

REPO = Path(__file__).resolve().parents[2]
BITS = BuildConfig.default("dup_image_bits")
JACCARD = BuildConfig.default("dup_text_jaccard")


def _h(img) -> np.ndarray:
    return np.frombuffer(phash(img), np.uint8).reshape(1, VIEWS, -1)


def _dist(a, b) -> int:
    return int(hamming(_h(a), _h(b))[0])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_image_hash_finds_each_planted_copy(kind):
    for seed in range(6):
        img = KINDS[kind](seed)
        for how, copy in COPIES.items():
            assert _dist(img, decode(copy(img))) <= BITS, f"{kind} {seed}: {how} copy not within {BITS} bits"


@pytest.mark.parametrize("kind", ["photo", "document", "chart"])
def test_image_hash_tells_apart_images_of_one_template(kind):
    """Pages, charts and photos drawn from one template: the same layout, other content."""
    hs = np.concatenate([_h(KINDS[kind](seed)) for seed in range(10)])
    i, j = np.triu_indices(10, 1)
    d = hamming(hs[i], hs[j])
    assert d.min() > BITS, (kind, int(d.min()))


def test_text_signature_one_word_edit_versus_another_answer():
    q = "What is the total revenue of the north region in 2019?"
    a = "The chart shows that the north region reached a total revenue of four million in that year."
    base = text_signature(q + "\n" + a)
    edited = text_signature(q + "\n" + a.replace("four", "five"))
    other = text_signature(q + "\n" + "It was the south region, far ahead of every other one.")
    assert (base == edited).mean() >= JACCARD
    assert (base == other).mean() < JACCARD


def _config(d: dict, out: Path, **kw) -> BuildConfig:
    return BuildConfig(inputs=d["inputs"], image_root=d["image_root"], out=str(out), shard_rows=10,
                       eval_set=[d["eval_set"]], eval_image_root=d["eval_image_root"],
                       near_duplicates="quarantine", contamination="quarantine", **kw)


def _snapshot(out: Path) -> dict[str, bytes]:
    files = {f"shards/{p.name}": p.read_bytes() for p in sorted((out / "shards").iterdir())}
    for name in ("quarantine.jsonl", "dedup.json", "report.json"):
        files[name] = (out / name).read_bytes()
    m = json.loads((out / "manifest.json").read_text())
    m.pop("timing")
    files["manifest"] = json.dumps(m, sort_keys=True).encode()
    return files


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return planted(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def local_build(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    build(_config(data, out))
    return out


def test_planted_set_precision_and_recall(data, local_build):
    out = local_build
    q = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    dups = {x["sample_id"]: x for x in q if x["reason"] == "near_duplicate"}
    leaks = {x["sample_id"] for x in q if x["reason"] == "eval_contamination"}
    truth = data["copies"]
    found = set(dups) & set(truth)
    precision, recall = len(found) / max(len(dups), 1), len(found) / len(truth)
    assert (precision, recall) == (1.0, 1.0), (sorted(dups), sorted(truth))
    for cid, kept in truth.items():
        assert f"'{kept}'" in dups[cid]["detail"]  # names the kept sample
        assert dups[cid]["record"]["id"] == cid  # the original record, read again from its source
    assert leaks == data["contaminated"]
    # Hard negatives are all trained on; the shards hold exactly the rows not quarantined.
    kept = [sid for p in sorted((out / "shards").iterdir()) for sid in read_shard(p).column("sample_id").to_pylist()]
    assert sorted(kept) == sorted(set(data["ids"]) - set(dups) - leaks)
    m = json.loads((out / "manifest.json").read_text())
    assert m["totals"]["read"] == len(data["ids"]) == m["totals"]["kept"] + m["totals"]["quarantined"]
    assert m["config"]["dup_image_bits"] == BITS and m["config"]["near_duplicates"] == "quarantine"
    # The report: rates per source and between sources, image-only / text-only matches, contamination.
    r = json.loads((out / "report.json").read_text())
    nd = r["near_duplicates"]
    assert nd["near_duplicate_rows"] == len(truth) and nd["between_sources"] == [
        {"kept_source": "a", "copy_source": "b", "copies": len(truth)}]
    assert nd["image_only_pairs"] >= 4 and nd["text_only_pairs"] >= 4  # same image / same text, other half
    assert nd["examples"][0]["kept"]["thumbs"][0].startswith("data:image/jpeg;base64,")
    assert any(op == "+" for op, _ in nd["examples"][0]["diff"])  # the edited word
    assert nd["contamination"]["eval_sets"][0]["contaminated_rows"] == 2
    checks = {c["name"]: c["status"] for c in r["checks"]}
    assert checks["benchmark contamination"] == "warn"
    assert "Near duplicates and contamination" in (out / "report.html").read_text()


def test_report_mode_keeps_every_row(data, tmp_path):
    out = tmp_path / "report-only"
    build(BuildConfig(inputs=data["inputs"], image_root=data["image_root"], out=str(out), shard_rows=10,
                      eval_set=[data["eval_set"]], eval_image_root=data["eval_image_root"]))
    assert (out / "quarantine.jsonl").read_text() == ""
    nd = json.loads((out / "dedup.json").read_text())
    assert nd["near_duplicate_rows"] == len(data["copies"]) and nd["contamination"]["rows"] == 2
    r = json.loads((out / "report.json").read_text())
    assert r["summary"]["verdict"] == "review"  # contamination found: nothing else is wrong with this build
    assert [c["name"] for c in r["checks"] if c["status"] != "ok"] == ["benchmark contamination"]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("no_ray_left")
def test_ray_at_1_and_2_workers_gives_the_local_bytes(data, local_build, tmp_path):
    want = _snapshot(local_build)
    for workers in (1, 2):
        out = tmp_path / f"ray{workers}"
        build(_config(data, out, engine="ray", workers=workers))
        got = _snapshot(out)
        for k in want:
            assert got[k] == want[k], f"{k} differs at {workers} Ray worker(s)"


@pytest.mark.timeout(300)
def test_killed_build_and_interrupted_global_pass_resume_to_the_same_bytes(data, local_build, tmp_path):
    want = _snapshot(local_build)
    out = tmp_path / "killed"
    cfg = _config(data, out)
    cmd = [sys.executable, "-m", "parsit_data.cli.main", "build", *cfg.inputs, "--out", str(out), "--image-root",
           cfg.image_root, "--shard-rows", "10", "--eval-set", cfg.eval_set[0], "--eval-image-root",
           cfg.eval_image_root, "--near-duplicates", "quarantine", "--contamination", "quarantine", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if len(list((out / "_parts").glob("part-*.json")) if (out / "_parts").is_dir() else []) >= 2:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
    subprocess.run(cmd, env=env, cwd=REPO, check=True, timeout=240)
    assert _snapshot(out) == want

    # A pass killed after rewriting one partition and before the next: the first is reused as rewritten,
    # the other (its shard rewritten, its part file not yet) is rebuilt and dropped again.
    parts = sorted((out / "_parts").glob("part-*.json"))
    applied = [p for p in parts if "dedup_dropped" in json.loads(p.read_text())]
    assert len(applied) >= 2
    meta = json.loads(applied[-1].read_text())
    meta.pop("dedup_dropped")
    meta["shard"]["sha256"] = "0" * 64  # as before the rewrite: another checksum than the shard's
    applied[-1].write_text(json.dumps(meta, sort_keys=True))
    (out / "manifest.json").unlink()
    build(cfg)
    assert _snapshot(out) == want


def test_eval_sets_read_leniently_in_any_input_format(tmp_path):
    """A JSON list with chat messages and no answers, and a JSONL with a question field: every item's images
    and questions are read; a missing image and a non-object are counted, never fatal."""
    from parsit_data.dedup.evalset import load_eval_sets
    from dedup_support import png, photo

    (tmp_path / "im").mkdir()
    (tmp_path / "im" / "q1.png").write_bytes(png(photo(1)))
    (tmp_path / "a.json").write_text(json.dumps([
        {"id": "x1", "images": ["q1.png"], "messages": [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": "Which country is shown on this map of Europe?"}]}]},
        {"id": "x2", "image": "missing.png", "question": "How many people stand in the queue in front?"},
        "not an object"]))
    (tmp_path / "b.jsonl").write_text(json.dumps({"question": "What is the capital of the country shown?"}) + "\n")
    ev = load_eval_sets([str(tmp_path / "a.json"), str(tmp_path / "b.jsonl")], str(tmp_path / "im"))
    assert [(it["eval_set"], it["item"]) for it in ev.items] == [("a", "x1"), ("a", "x2"), ("b", "b:1")]
    assert ev.img_item.tolist() == [0] and ev.question_item.tolist() == [0, 1, 2]
    assert ev.problems == {"a": 2}  # the missing image and the string


@pytest.mark.parametrize("threshold", [0.7, 0.55, 0.5, 0.3, 1.0])
def test_candidate_pairs_are_verified_exactly_as_the_full_comparison(threshold):
    """pairs_at_least drops a pair as soon as it cannot reach the threshold: the pairs kept and their
    Jaccards are exactly those of comparing every permutation of every candidate."""
    import numpy as np

    from parsit_data.dedup import index

    rng = np.random.default_rng(3)
    a = rng.integers(0, 3, (400, 128)).astype(np.uint32)
    b = rng.integers(0, 3, (300, 128)).astype(np.uint32)
    b[:30] = a[:30]  # exact copies
    b[30:60, :40] = a[30:60, :40]  # partial copies: 40 permutations from the start, then ~1/3 by chance
    i, j = rng.integers(0, 400, 60_000), rng.integers(0, 300, 60_000)
    i[:200], j[:200] = np.arange(200) % 60, np.arange(200) % 60
    full = index.jaccard(a[i], b[j])
    want = np.flatnonzero(full >= threshold)
    got, jac = index.pairs_at_least(a, i, b, j, threshold)
    assert len(want) > 0 and np.array_equal(got, want) and np.array_equal(jac, full[want])
