"""LocalyticsHook against the Localytics emulator over real HTTP: every call, errors, limits, error logs."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from airflow_provider_profiles.hooks.base import (
    JobState,
    VendorAuthError,
    VendorNotFoundError,
    VendorRateLimitError,
    VendorValidationError,
)
from airflow_provider_profiles.hooks.localytics import LocalyticsHook

KEY, SECRET = "localytics-key", "localytics-secret"
GOOD = '{"customer_id":"%s","changes":[{"op":"assign","attr":"plan","value":"gold"},{"op":"increment","attr":"n","value":2}]}\n'
BAD = '{"customer_id":"%s","changes":[{"op":"assign","attr":"bio","value":"%s"}]}\n'


@pytest.fixture
def localytics(emulator, airflow_connection):
    """``localytics(**emulator_config, extra=..., login=..., password=...)`` -> (server, hook on a fresh conn id)."""

    def start(extra=None, login=KEY, password=SECRET, **config):
        config.setdefault("time_scale", 20)  # a job takes 1.5 emulated seconds: 75 ms
        server = emulator("localytics", **config)
        conn_id = f"localytics_{uuid.uuid4().hex[:8]}"  # fresh id: client rate-limit buckets are per connection
        airflow_connection(conn_id, "localytics", login=login, password=password, host=server.url,
                           extra={"org_id": "60", **(extra or {})})
        return server, LocalyticsHook(conn_id)

    return start


def write(tmp_path, text, name="changes.json"):
    path = tmp_path / name
    path.write_text(text)
    return path


def wait_done(hook, kind, activity_id, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        status = hook.job_status(kind=kind, activity_id=activity_id)
        if status.terminal or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def test_profile_upload_runs_to_completion_and_applies_changes(localytics, tmp_path):
    server, hook = localytics(time_scale=0)  # the emulated clock stands still until advanced
    activity_id = hook.upload_profiles(write(tmp_path, GOOD % "a" + GOOD % "b"))  # org_id from the connection
    first = hook.job_status(kind="profiles", activity_id=activity_id)
    assert first.state is JobState.RUNNING and first.vendor_status == "Pending"
    server.emulator.clock.advance(server.emulator.pending_seconds + server.emulator.running_seconds)
    status = wait_done(hook, "profiles", activity_id)
    assert status.state is JobState.SUCCESS and status.vendor_status == "Completed"
    assert status.payload["statistics"] == {"total": 2, "succeeded": 2, "failed": 0}
    assert "first_errors" not in status.payload
    raw = hook.get_profile_import_status(activity_id)
    assert raw["target"] == {"org_id": "60"} and raw["upload_statistics"]["parsed_imports"] == 2
    assert server.emulator.snapshot()["profiles"]["org_id:60"] == {"a": {"plan": "gold", "n": 2},
                                                                  "b": {"plan": "gold", "n": 2}}


def test_app_scope_and_scope_checks(localytics, tmp_path):
    server, hook = localytics()
    file = write(tmp_path, GOOD % "a")
    activity_id = hook.upload_profiles(file, app_id="app-2")
    assert wait_done(hook, "profiles", activity_id).state is JobState.SUCCESS
    assert "app_id:app-2" in server.emulator.snapshot()["profiles"]
    with pytest.raises(ValueError, match="not both"):
        hook.upload_profiles(file, org_id="60", app_id="app-1")
    with pytest.raises(ValueError, match="format must be"):
        hook.upload_profiles(file, format="xml")
    uploads = server.emulator.counters["POST /v1/imports/profiles/upload"]
    assert uploads == 1  # the refused calls sent nothing


def test_csv_format_upload(localytics, tmp_path):
    server, hook = localytics()
    activity_id = hook.upload_profiles(write(tmp_path, "customer_id,plan\nz,silver\n", "p.csv"), format="csv")
    assert wait_done(hook, "profiles", activity_id).payload["statistics"]["succeeded"] == 1
    assert server.emulator.snapshot()["profiles"]["org_id:60"]["z"] == {"plan": "silver"}


def test_wrong_credentials_and_forbidden_scope(localytics, tmp_path, caplog, capsys):
    server, hook = localytics(password="not-the-secret")
    file = write(tmp_path, GOOD % "a")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(VendorAuthError) as error:
        hook.upload_profiles(file)
    assert error.value.status == 401 and "not valid" in str(error.value)
    captured = capsys.readouterr()
    logs = caplog.text + captured.out + captured.err
    assert "/v1/imports/profiles/upload" in logs  # proof the logs are captured here
    assert "not-the-secret" not in str(error.value) and "not-the-secret" not in logs
    _, good_hook = localytics()
    with pytest.raises(VendorAuthError) as forbidden:
        good_hook.upload_profiles(file, org_id="61")
    assert forbidden.value.status == 403 and "organization 61" in str(forbidden.value)


def test_unknown_activity_id_is_not_found(localytics):
    _, hook = localytics()
    with pytest.raises(VendorNotFoundError):
        hook.job_status(kind="profiles", activity_id="nope")
    with pytest.raises(VendorNotFoundError):
        hook.job_status(kind="audiences", activity_id="nope")
    with pytest.raises(ValueError, match="kind must be"):
        hook.job_status(kind="events", activity_id="x")


def test_failed_lines_surface_from_the_error_log_without_credentials(localytics, tmp_path):
    server, hook = localytics()
    text = GOOD % "a" + BAD % ("b", "x" * 300) + "not json\n" + GOOD % "c"
    activity_id = hook.upload_profiles(write(tmp_path, text))
    status = wait_done(hook, "profiles", activity_id)
    assert status.state is JobState.SUCCESS
    assert status.payload["statistics"] == {"total": 4, "succeeded": 2, "failed": 2}
    errors = status.payload["first_errors"]
    assert [e["line"] for e in errors] == [2, 3] and "longer than 255" in errors[0]["error"]
    fetches = server.emulator.snapshot()["error_log_fetches"]
    assert fetches and not any(f["authorization"] for f in fetches)
    assert hook.get_error_log(status.payload["error_log"], limit=1) == errors[:1]


def test_a_file_with_no_valid_line_fails_with_the_first_errors(localytics, tmp_path):
    _, hook = localytics()
    activity_id = hook.upload_profiles(write(tmp_path, BAD % ("b", "y" * 256) + '{"customer_id":"c"}\n'))
    status = wait_done(hook, "profiles", activity_id)
    assert status.state is JobState.FAILED and status.vendor_status == "Failed"
    assert "first errors" in status.message and "longer than 255" in status.message
    assert "changes must be a list" in status.message


def test_audience_lifecycle(localytics, tmp_path):
    server, hook = localytics()
    ids = write(tmp_path, '{"customer_id":"a"}\n{"customer_id":"b"}\n{"customer_id":"c"}\n', "ids.json")
    activity_id = hook.create_audience(app_id="app-1", audience_name="vip", file=ids)
    status = wait_done(hook, "audiences", activity_id)
    assert status.state is JobState.SUCCESS
    assert status.payload["statistics"] == {"total": 3, "succeeded": 3, "failed": 0}  # strings -> ints
    list_id = status.payload["audience_list_id"]
    [listed] = hook.list_audiences("app-1")
    assert listed["id"] == list_id and listed["version"] == 1 and listed["record_count"] == 3
    assert hook.find_audience("app-1", "vip")["id"] == list_id

    replacement = hook.replace_audience(list_id, app_id="app-1", file=write(tmp_path, '{"customer_id":"z"}\n', "z.json"))
    assert wait_done(hook, "audiences", replacement).state is JobState.SUCCESS
    [listed] = hook.list_audiences("app-1")
    assert (listed["version"], listed["record_count"]) == (2, 1)

    assert hook.rename_audience(list_id, "vip-2024")["name"] == "vip-2024"
    assert hook.find_audience("app-1", "vip") is None
    hook.delete_audience(list_id)
    assert hook.list_audiences("app-1") == []
    with pytest.raises(VendorNotFoundError):
        hook.delete_audience(list_id)
    with pytest.raises(VendorAuthError):
        hook.list_audiences("someone-elses-app")
    assert server.emulator.snapshot()["audiences"] == {}


def test_audience_list_limit_per_key(localytics, tmp_path):
    _, hook = localytics(max_lists=2)
    ids = write(tmp_path, '{"customer_id":"a"}\n', "ids.json")
    hook.create_audience(app_id="app-1", audience_name="one", file=ids)
    hook.create_audience(app_id="app-1", audience_name="two", file=ids)
    with pytest.raises(VendorValidationError, match="already has 2 audience lists"):
        hook.create_audience(app_id="app-1", audience_name="three", file=ids)


def test_hourly_upload_limit_waits_instead_of_failing(localytics, tmp_path):
    # One emulated hour = 1 real second; the client limiter is told the same compressed hour.
    server, hook = localytics(time_scale=3600, extra={"rate_limits": {"upload": [10, 1]}})
    file = write(tmp_path, GOOD % "a")
    started = time.monotonic()
    activity_ids = [hook.upload_profiles(file) for _ in range(12)]
    elapsed = time.monotonic() - started
    assert len(set(activity_ids)) == 12
    assert len(server.emulator.snapshot()["jobs"]) == 12
    assert elapsed >= 0.9  # uploads 11 and 12 had to wait for the window to move on
    assert elapsed < 15


def test_upload_waits_out_a_429_beyond_the_retry_policy(localytics, tmp_path):
    # max_attempts=1: the base policy gives up at once, so the hook's own wait-for-a-slot loop is what recovers
    server, hook = localytics(time_scale=3600, extra={"max_attempts": 1, "rate_limits": {"upload": [100, 1]}})
    file = write(tmp_path, GOOD % "a")
    for _ in range(11):
        hook.upload_profiles(file)
    assert server.emulator.throttled["upload"] >= 1
    assert len(server.emulator.jobs) == 11


def test_upload_gives_up_after_upload_max_wait(localytics, tmp_path):
    server, hook = localytics(upload_limit=[1, 3600], extra={"max_attempts": 1, "upload_max_wait": 5})
    file = write(tmp_path, GOOD % "a")
    hook.upload_profiles(file)
    started = time.monotonic()
    with pytest.raises(VendorRateLimitError):
        hook.upload_profiles(file)
    assert time.monotonic() - started < 2  # Retry-After of ~1 hour is beyond the 5 s budget: no pointless wait


def test_status_429_is_retried(localytics, tmp_path):
    # the emulator allows 3 status calls per (compressed) minute; the client is not told, so it meets 429s
    server, hook = localytics(time_scale=60, status_limit=[3, 60])
    activity_id = hook.upload_profiles(write(tmp_path, GOOD % "a"))
    for _ in range(5):
        hook.get_profile_import_status(activity_id)
    assert server.emulator.throttled["status"] >= 1


def test_async_status_for_both_kinds(localytics, tmp_path):
    server, hook = localytics(time_scale=0)  # the emulated clock stands still until advanced
    profiles = hook.upload_profiles(write(tmp_path, GOOD % "a" + BAD % ("b", "x" * 256)))
    audience = hook.create_audience(app_id="app-1", audience_name="n", file=write(tmp_path, '{"customer_id":"a"}\n', "a.json"))
    server.emulator.clock.advance(server.emulator.pending_seconds + server.emulator.running_seconds)

    async def statuses():
        async_hook = LocalyticsHook(hook.conn_id)
        try:
            return (await async_hook.ajob_status(kind="profiles", activity_id=profiles),
                    await async_hook.ajob_status(kind="audiences", activity_id=audience))
        finally:
            await async_hook.aclose()

    profile_status, audience_status = asyncio.run(statuses())
    assert profile_status.state is JobState.SUCCESS and profile_status.payload["first_errors"][0]["line"] == 2
    assert audience_status.state is JobState.SUCCESS and audience_status.payload["statistics"]["succeeded"] == 1


def test_credentials_never_reach_logs_or_urls(localytics, tmp_path, caplog, capsys):
    server, hook = localytics()
    caplog.set_level(logging.DEBUG)
    activity_id = hook.upload_profiles(write(tmp_path, GOOD % "a" + BAD % ("b", "x" * 256)))
    status = wait_done(hook, "profiles", activity_id)
    hook.create_audience(app_id="app-1", audience_name="n", file=write(tmp_path, '{"customer_id":"a"}\n', "a.json"))
    captured = capsys.readouterr()
    logs = caplog.text + captured.out + captured.err  # stdlib logging and Airflow's structlog output
    assert "Localytics profile import" in logs and "/errors/" in logs  # proof the logs are captured here
    for secret in (SECRET, KEY):
        assert secret not in logs
        assert secret not in str(status.payload)
    assert all("@" not in path for path in server.emulator.counters)


def test_writer_output_is_accepted_line_for_line(localytics, tmp_path):
    from airflow_provider_profiles.writers.localytics import ProfileChangesWriter

    server, hook = localytics()
    writer = ProfileChangesWriter({"note": "note", "tags": ("tags", "set-add")})
    rows = [{"customer_id": "u1", "note": 'quote " and line\u2028separator', "tags": ["x\ny"]},
            {"customer_id": "u2", "note": "Zoë\r\n", "tags": None}]
    path = tmp_path / "w.ndjson"
    path.write_text("".join(writer.encode(row) for row in rows), encoding="utf-8")
    status = wait_done(hook, "profiles", hook.upload_profiles(path))
    assert status.payload["statistics"] == {"total": 2, "succeeded": 2, "failed": 0}
    profiles = server.emulator.snapshot()["profiles"]["org_id:60"]
    assert profiles["u1"] == {"note": 'quote " and line\u2028separator', "tags": ["x\ny"]}
    assert profiles["u2"] == {"note": "Zoë\r\n"}
