"""Progress of real uploads and loads against the emulators: the shared reporter's lines in the log."""

from __future__ import annotations

import logging

from airflow_provider_profiles import storage
from airflow_provider_profiles.hooks.mediarithmics import MediarithmicsHook
from tests.integration.operators.test_gainsight_px_load import gpx, run, write_csv  # noqa: F401 (fixture)
from tests.integration.operators.test_mediarithmics import chunks, mics  # noqa: F401 (fixture)


def lines(caplog, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]


def test_a_file_upload_logs_bytes_sent_as_the_client_reads_them(mics, tmp_path, caplog, monkeypatch):
    mics()
    monkeypatch.setattr(storage, "UPLOAD_PROGRESS_INTERVAL", 0)  # a line per read: no clock to wait for
    [file] = chunks(tmp_path, [2000])
    size = (tmp_path / "chunk_000.ndjson").stat().st_size
    hook = MediarithmicsHook()
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "progress")["id"]
    caplog.set_level(logging.INFO)
    hook.create_execution(import_id, file)
    found = lines(caplog, f"upload progress of {file}")
    assert any(f"of {size:,} bytes" in line and "bytes/s, ETA" in line for line in found), found
    assert found[-1].startswith(f"upload progress of {file}: sent {size:,} bytes (100%)")


def test_the_gainsight_px_loader_reports_rows_through_the_shared_reporter(gpx, tmp_path, capfd):
    source = write_csv(tmp_path / "users.csv", ["id", "email"], [(f"u{i}", f"u{i}@x.com") for i in range(50)])
    run(source=source, dry_run=True, progress_interval=0, field_mapping={"identifyId": "id", "email": "email"})
    found = [line for line in "".join(capfd.readouterr()).splitlines() if "Gainsight PX load progress" in line]
    assert found and "50 of 50 rows (100%)" in found[-1] and "rows/s, ETA" in found[-1] and "dry_run 50" in found[-1]
