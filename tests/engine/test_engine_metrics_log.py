"""The JSONL metrics file: append, non-finite values, truncation on resume, bad lines."""

from __future__ import annotations

import pytest

from instaseg.engine.metrics_log import MetricsFileError, MetricsLog, read_metrics


def test_append_read_and_truncate(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for iteration in (10, 20, 30):
        log.append({"kind": "train", "iteration": iteration, "loss": 1.0 / iteration})
    log.append({"kind": "eval", "iteration": 30, "segm_AP": float("nan")})
    records = read_metrics(log.path)
    assert [r["iteration"] for r in records] == [10, 20, 30, 30]
    assert records[-1]["segm_AP"] is None
    log.truncate_after(20)
    assert [r["iteration"] for r in read_metrics(log.path)] == [10, 20]


def test_truncate_without_a_file_does_nothing(tmp_path):
    MetricsLog(tmp_path / "none.jsonl").truncate_after(5)
    assert not (tmp_path / "none.jsonl").exists()


def test_bad_lines_name_the_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1}\n\n{"iteration": 2\n')
    with pytest.raises(MetricsFileError, match=r"metrics\.jsonl, line 3: not valid JSON"):
        read_metrics(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(MetricsFileError, match="line 1: expected a JSON object, got list"):
        read_metrics(path)


def test_an_append_cut_short_by_a_crash_is_skipped(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for iteration in (1, 2):
        log.append({"kind": "train", "iteration": iteration})
    with open(log.path, "a", encoding="utf-8") as stream:
        stream.write('{"kind": "train", "itera')  # no newline: the process died mid-write
    assert [r["iteration"] for r in read_metrics(log.path)] == [1, 2]
    log.truncate_after(2)  # what resume does
    assert log.path.read_text().endswith('"iteration": 2}\n')
