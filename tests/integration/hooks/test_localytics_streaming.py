"""A Localytics profile upload streams its file: the uploading process's peak memory grows by far less
than the file. (Localytics documents no file size limit, so a sync sends one file: 181 MB at 1,000,000
rows in benchmarks/throughput.py, where a whole-body upload took the upload task 345 MB over its start.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

UPLOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from airflow_provider_profiles.hooks.localytics import LocalyticsHook

    def status_kib(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

    hook = LocalyticsHook("localytics_streaming")
    hook.upload_profiles(sys.argv[1])  # connection, session and imports loaded before the baseline
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets the peak RSS (VmHWM) to the current RSS
    before = status_kib("VmRSS")
    activity = hook.upload_profiles(sys.argv[2])
    print(json.dumps({"before_kib": before, "peak_kib": status_kib("VmHWM"), "activity": activity}))
    """
)


def test_100_mb_profile_upload_streams_in_bounded_memory(emulator, tmp_path):
    server = emulator("localytics", time_scale=20)
    # 500 lines of ~200 KB (values over 255 characters: failed lines, quick for the emulator to check)
    line = json.dumps({"customer_id": "c1", "changes": [{"op": "assign", "attr": "bio", "value": "x" * 210_000}]})
    path = tmp_path / "big.json"
    with path.open("w") as out:
        for _ in range(5):
            out.write((line + "\n") * 100)
    size = path.stat().st_size
    assert size > 100 * 1024 * 1024
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"customer_id": "c0", "changes": [{"op": "assign", "attr": "plan", "value": "a"}]}) + "\n")

    conn = {"conn_type": "localytics", "login": "localytics-key", "password": "localytics-secret",
            "host": server.url, "extra": {"org_id": "60"}}
    env = {**os.environ, "AIRFLOW_CONN_LOCALYTICS_STREAMING": json.dumps(conn)}
    run = subprocess.run([sys.executable, "-c", UPLOAD_SCRIPT, str(small), str(path)], env=env,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    growth_mib = (figures["peak_kib"] - figures["before_kib"]) / 1024
    print(f"uploaded {size / 2**20:.0f} MiB; RSS {figures['before_kib'] / 1024:.0f} MiB before, "
          f"peak {figures['peak_kib'] / 1024:.0f} MiB (+{growth_mib:.0f} MiB)")
    with server.emulator.lock:
        jobs = {str(key): job for key, job in server.emulator.jobs.items()}
    assert jobs[str(figures["activity"])]["total"] == 500  # the emulator read the whole file
    assert growth_mib < size / 2**20 / 4, f"the upload grew the process by {growth_mib:.0f} MiB for a {size / 2**20:.0f} MiB file"
