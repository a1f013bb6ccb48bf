"""The shared progress reporter: lines at a steady interval on a clock the test moves, uploads counted as
they are read."""

from __future__ import annotations

import io
import logging

from airflow_provider_profiles.progress import Progress
from airflow_provider_profiles.storage import open_upload


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def messages(caplog, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]


def test_lines_come_at_the_interval_with_rate_and_eta(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO)
    progress = Progress(1000, 10, unit="rows", label="load progress", doing="loading", done_verb="loaded", clock=clock)
    for _ in range(10):  # 100 rows every 5 s: a line every other step
        clock.now += 5
        progress.advance(100)
    progress.finish()
    lines = messages(caplog, "load progress")
    assert lines[:2] == ["load progress: loading, 200 of 1,000 rows (20%), 20 rows/s, ETA 0:00:40",
                         "load progress: loading, 400 of 1,000 rows (40%), 20 rows/s, ETA 0:00:30"]
    assert len(lines) == 6 and lines[-1] == "load progress: loaded 1,000 rows (100%), 20 rows/s"


def test_no_interval_no_lines_and_an_unknown_total_has_no_eta(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO)
    with Progress(100, None, label="quiet", clock=clock) as quiet:
        clock.now += 60
        quiet.advance(100)
    with Progress(None, 1, unit="bytes", label="stream", doing="sending", clock=clock) as stream:
        clock.now += 2
        stream.advance(4096)
    assert messages(caplog, "quiet") == []
    assert messages(caplog, "stream")[0] == "stream: sending, 4,096 bytes, 2,048 bytes/s"


def test_an_upload_counts_bytes_as_the_client_reads_them(tmp_path, caplog):
    clock = Clock()
    caplog.set_level(logging.INFO)
    path = tmp_path / "chunk.ndjson"
    path.write_bytes(b"x" * 40_000)
    with open_upload(str(path), progress_interval=15, clock=clock) as upload:
        assert upload.size == 40_000
        while True:  # what the HTTP client does: read by blocks
            clock.now += 10
            if not upload.body.read(10_000):
                break
    lines = messages(caplog, "upload progress")
    assert lines[0] == f"upload progress of {path}: sending, 20,000 of 40,000 bytes (50%), 1,000 bytes/s, ETA 0:00:20"
    assert lines[-1] == f"upload progress of {path}: sent 40,000 bytes (100%), 800 bytes/s"


def test_a_rewound_upload_counts_from_where_it_is_and_chunks_are_counted_too(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO)
    with open_upload(io.BytesIO(b"y" * 100), progress_interval=0, clock=clock) as upload:
        upload.body.read(60)
        upload.body.seek(0)  # a retry resends the body whole
        clock.now += 1
        upload.body.read()
    with open_upload(iter([b"a" * 10, b"b" * 30]), progress_interval=0, clock=clock) as chunks:
        clock.now += 1
        assert b"".join(chunks.body) == b"a" * 10 + b"b" * 30
    lines = messages(caplog, "upload progress")
    assert "upload progress of the upload: sent 100 bytes (100%), 100 bytes/s" in lines  # 60, rewound, then 100
    assert lines[-1].endswith("sent 40 bytes (100%), 40 bytes/s")
