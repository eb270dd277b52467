"""``parsit-data validate``: exit codes, the summary table, and agreement with the build's quarantine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parsit_data.cli.main import main

from validate_helpers import conv, save_image, write_jsonl

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"


def _run(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out + out.err


def test_clean_input_exits_0(tmp_path, capsys):
    save_image(tmp_path / "img" / "a.png", (40, 40))
    src = write_jsonl(tmp_path / "clean.jsonl", [conv(user="<image>\nWhat?", image="a.png"), conv()])
    code, out = _run(["validate", str(src), "--image-root", str(tmp_path / "img"), "--tokenizer", "none"], capsys)
    assert code == 0, out
    assert "clean" in out and "2 records, 0 rejected" in out


def test_demo_exits_1_with_table_and_same_quarantine_as_the_build(tmp_path, capsys, demo_build):
    q = tmp_path / "q.jsonl"
    code, out = _run(["validate", str(DEMO / "mixture.yaml"), "--image-root", str(DEMO / "images"),
                      "--quarantine-out", str(q)], capsys)
    assert code == 1
    for word in ("conversations", "captions", "rejected by reason", "image_outside_root", "duplicate_id",
                 "special_token_in_text"):
        assert word in out, out
    mine = [json.loads(x) for x in q.read_text(encoding="utf-8").splitlines()]
    build_q = [json.loads(x) for x in (demo_build / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()]
    assert mine == build_q  # same checks, same lines (the demo has nothing over-long)


def test_header_mode_lets_the_truncated_image_through(capsys):
    code, out = _run(["validate", str(DEMO / "mixture.yaml"), "--image-root", str(DEMO / "images"),
                      "--image-check", "header", "--tokenizer", "none"], capsys)
    assert code == 1
    assert "image_unreadable" not in out and "8 rejected" in out


def test_tokenizer_special_tokens_are_checked_when_given(tmp_path, capsys):
    src = write_jsonl(tmp_path / "t.jsonl", [conv(user="what is <|endoftext|>?")])
    assert _run(["validate", str(src), "-q"], capsys)[0] == 1  # Qwen3's special token
    assert _run(["validate", str(src), "-q", "--tokenizer", "none"], capsys)[0] == 0  # template tokens only


def test_fix_missing_placeholder_is_counted(tmp_path, capsys):
    save_image(tmp_path / "a.png", (40, 40))
    src = write_jsonl(tmp_path / "t.jsonl", [conv(user="Describe.", image="a.png")])
    code, out = _run(["validate", str(src), "--image-root", str(tmp_path), "--tokenizer", "none",
                      "--fix-missing-placeholder"], capsys)
    assert code == 0 and "placeholders" in out
    assert _run(["validate", str(src), "--image-root", str(tmp_path), "--tokenizer", "none", "-q"], capsys)[0] == 1


@pytest.mark.parametrize("argv", [
    ["validate"],
    ["validate", "does/not/exist.jsonl"],
    ["validate", "DEMO", "--image-check", "pixels"],
    ["validate", "DEMO", "--image-root", "does/not/exist"],
    ["validate", "DEMO", "--min-image-side", "-1"],
    ["validate", "DEMO", "--no-such-option"],
    ["validate", "DEMO", "--tokenizer", "/nonexistent/tokenizer"],
])
def test_usage_errors_exit_2(argv, capsys):
    argv = [str(DEMO / "conversations.jsonl") if a == "DEMO" else a for a in argv]
    code, out = _run(argv, capsys)
    assert code == 2, out
    assert "Traceback" not in out


def test_help_lists_the_commands(capsys):
    code, out = _run(["--help"], capsys)
    assert code == 0 and "validate" in out and "schema" in out


@pytest.mark.timeout(120)
def test_throughput_benchmark_runs(tmp_path):
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "validate_throughput.py"
    r = subprocess.run([sys.executable, str(bench), "--n", "12", "--size", "64x48", "--repeat", "1",
                        "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=110)
    assert r.returncode == 0, r.stderr
    for mode in ("no image checks", "header", "full", "baseline"):
        assert mode in r.stdout


def test_records_are_rendered_with_the_chosen_template(capsys):
    """Multi-round chats do not fit ``plain``: validate says so (template_mismatch) as the build would."""
    code, out = _run(["validate", str(DEMO / "conversations.jsonl"), "--image-root", str(DEMO / "images"),
                      "--template", "plain"], capsys)
    assert code == 1 and "template_mismatch" in out
    assert _run(["validate", str(DEMO / "captions.json"), "--image-root", str(DEMO / "images"), "--template",
                 "plain", "-q"], capsys)[0] == 0
