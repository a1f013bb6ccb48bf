"""Uploading a 200 MB file streams it: the uploading process's peak memory grows by far less than the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

UPLOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from airflow_provider_profiles.hooks.mediarithmics import MediarithmicsHook

    def status_kib(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

    hook = MediarithmicsHook()
    hook.get_document_import(sys.argv[1])  # connection, session and imports loaded before the baseline
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets the peak RSS (VmHWM) to the current RSS
    before = status_kib("VmRSS")
    started = time.monotonic()
    execution = hook.create_execution(sys.argv[1], sys.argv[2], max_file_bytes=None)
    seconds = time.monotonic() - started
    peak = status_kib("VmHWM")
    print(json.dumps({"before_kib": before, "peak_kib": peak, "seconds": seconds, "execution": execution["id"]}))
    """
)


def test_200_mb_upload_streams_in_bounded_memory(emulator, tmp_path):
    server = emulator("mediarithmics", token="t", pending_seconds=0, running_seconds=0)
    # 1,000 lines of ~200 KB: quick to write and for the emulator to validate
    line = json.dumps({"operation": "UPSERT", "email_hash": "h", "user_profile": {"blob": "x" * 215_000}}).encode() + b"\n"
    path = tmp_path / "big.ndjson"
    with path.open("wb") as out:
        for _ in range(10):
            out.write(line * 100)
    size = path.stat().st_size
    assert size > 200 * 1024 * 1024

    from airflow_provider_profiles.hooks.mediarithmics import MediarithmicsHook  # noqa: PLC0415

    setup_env = {"AIRFLOW_CONN_MEDIARITHMICS_DEFAULT": json.dumps(
        {"conn_type": "mediarithmics", "password": "t", "host": server.url, "extra": {"datamart_id": "1000"}})}
    env = {**os.environ, **setup_env}
    os.environ.update(setup_env)
    try:
        import_id = MediarithmicsHook().create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "big")["id"]
    finally:
        os.environ.pop("AIRFLOW_CONN_MEDIARITHMICS_DEFAULT")
    run = subprocess.run([sys.executable, "-c", UPLOAD_SCRIPT, import_id, str(path)], env=env,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    growth_mib = (figures["peak_kib"] - figures["before_kib"]) / 1024
    print(f"uploaded {size / 2**20:.0f} MiB in {figures['seconds']:.1f}s; RSS {figures['before_kib'] / 1024:.0f} MiB "
          f"before, peak {figures['peak_kib'] / 1024:.0f} MiB during the upload (+{growth_mib:.1f} MiB)")
    assert growth_mib < 32, f"peak memory grew {growth_mib:.0f} MiB while uploading {size / 2**20:.0f} MiB"
    execution = server.emulator.snapshot()["executions"][figures["execution"]]
    assert execution["parameters"]["input_file_size"] == size
    assert execution["result"]["total_success"] == 1000
