"""Progress (records/s, ETA from a cheap count) and the choice made by ``--engine auto``. No Ray started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parsit_data.config import BuildConfig
from parsit_data.engines import choose
from parsit_data.pipeline import PartitionResult
from parsit_data.progress import BuildProgress, estimate_total
from parsit_data.sources import expand_inputs
from parsit_data.stats import PartitionStats


def _jsonl(path: Path, n: int, trailing_newline: bool = True) -> Path:
    text = "\n".join(json.dumps({"conversations": [{"from": "human", "value": f"q{i}"},
                                                  {"from": "gpt", "value": f"a{i}"}]}) for i in range(n))
    path.write_text(text + ("\n" if trailing_newline else ""))
    return path


def test_estimate_total_counts_jsonl_and_applies_sampling(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", 40)
    b = _jsonl(tmp_path / "b.jsonl", 25, trailing_newline=False)
    (tmp_path / "mix.yaml").write_text(
        f"datasets:\n  - {{json_path: {a}, sampling_strategy: 'first:10%'}}\n"
        f"  - {{json_path: {b}, sampling_strategy: 'random:7'}}\n  - {{json_path: {b}}}\n")
    specs = expand_inputs([tmp_path / "mix.yaml"])
    assert estimate_total(specs) == 4 + 7 + 25
    # The count is what the sources actually yield.
    from parsit_data.sources import iter_source
    assert estimate_total(specs) == sum(1 for s in specs for _ in iter_source(s))


def test_a_json_list_has_no_cheap_total(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps([{"conversations": []}] * 3))
    assert estimate_total(expand_inputs([tmp_path / "l.json"])) is None
    p = BuildProgress()
    p.start(expand_inputs([tmp_path / "l.json"]))
    assert p.eta_seconds() is None and "ETA" not in p.line()


def _result(index, rows, quarantined, reused=False):
    return PartitionResult(index, {"path": "", "rows": rows, "bytes": 0, "sha256": ""}, PartitionStats(),
                           quarantined, reused)


def test_rate_and_eta_leave_reused_partitions_out_of_the_rate():
    p = BuildProgress(total=1000, started=100.0)
    p.update(_result(0, 300, 0, reused=True))  # free: counts as done, not in the rate
    p.update(_result(2, 90, 10))
    p.update(_result(1, 95, 5))
    assert (p.records, p.kept, p.quarantined, p.reused) == (500, 485, 15, 1)
    assert p.rate(now=110.0) == pytest.approx(20.0)  # 200 processed records in 10 s
    assert p.eta_seconds(now=110.0) == pytest.approx(25.0)  # 500 left at 20/s
    line = p.line(now=110.0)
    assert "500/1,000 records (485 kept, 15 quarantined)" in line and "ETA 25s" in line and "1 reused" in line


def test_engine_auto_picks_local_for_small_inputs_and_ray_for_a_cluster(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    small = _jsonl(tmp_path / "s.jsonl", 5)
    specs = expand_inputs([small])
    cfg = BuildConfig(inputs=[str(small)], out=str(tmp_path / "o"), engine="auto")
    assert choose.choose_engine(cfg, specs)[0] == "local"
    assert choose.choose_engine(cfg.model_copy(update={"ray_address": "10.0.0.1:6379"}), specs)[0] == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert choose.choose_engine(cfg, specs) == ("ray", "RAY_ADDRESS=http://127.0.0.1:8265 (running as a Ray job "
                                                       "or on a cluster)")
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(choose, "AUTO_RAY_BYTES", small.stat().st_size)
    monkeypatch.setattr(choose.os, "cpu_count", lambda: 2)
    assert choose.choose_engine(cfg, specs)[0] == "ray"
    monkeypatch.setattr(choose.os, "cpu_count", lambda: 1)
    assert choose.choose_engine(cfg, specs)[0] == "local"


def test_cli_build_defaults_to_auto_and_prints_progress(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from parsit_data.cli.main import app

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    src = _jsonl(tmp_path / "in.jsonl", 30)
    res = CliRunner().invoke(app, ["build", str(src), "--out", str(tmp_path / "o"), "--shard-rows", "10"])
    assert res.exit_code == 0, res.output
    assert "engine: local (auto: inputs are" in res.output
    assert "30/30 records (30 kept, 0 quarantined)" in res.output
