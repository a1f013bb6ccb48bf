"""ApsisOneHook against the Apsis One emulator over real HTTP: auth, lookups, imports, upload, slots."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from airflow_provider_profiles.hooks.apsis_one import (
    ApsisOneHook,
    FileTooLargeError,
    ImportSpec,
    ImportSpecError,
    check_import_file,
)
from airflow_provider_profiles.hooks.base import (
    JobState,
    VendorAuthError,
    VendorRateLimitError,
    VendorValidationError,
)
from airflow_provider_profiles.operators.apsis_one import ApsisOneProfileImportOperator
from tests.integration.hooks.test_apsis_one_support import (
    CLIENT_SECRET,
    FAST,
    IMPORT_KWARGS,
    PROFILES,
    SECTION,
    connect,
    write_csv,
)

SPEC = ImportSpec(keyspace="email", keyspace_column="email", attributes={"first_name": "First name", "city": "City"},
                  tags={"vip": "VIP"}, consents=[{"column": "news", "topic": "usercreated.topics.news-0k9d"}])


@pytest.fixture
def apsis(emulator, monkeypatch):
    def start(**config):
        server = emulator("apsis_one", **{**FAST, **config})
        connect(monkeypatch, server)
        return server

    return start


def requests_to(server, method_path: str) -> int:
    return server.emulator.counters[method_path]


def wait_terminal(hook: ApsisOneHook, import_id: str, limit: float = 10.0):
    deadline = time.monotonic() + limit
    while True:
        status = hook.job_status(section=SECTION, import_id=import_id)
        if status.terminal or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


# --- auth ------------------------------------------------------------------------------------------
def test_token_is_cached_across_calls(apsis):
    server = apsis()
    hook = ApsisOneHook()
    for _ in range(3):
        hook.list_sections()
    assert server.emulator.tokens_issued == 1
    assert requests_to(server, "GET /audience/sections") == 3


def test_token_refreshed_before_it_expires(apsis):
    server = apsis(token_ttl=1)  # the hook refreshes 10% of the lifetime early
    hook = ApsisOneHook()
    hook.list_sections()
    time.sleep(0.95)
    hook.list_sections()
    assert server.emulator.tokens_issued == 2
    assert requests_to(server, "GET /audience/sections") == 2  # no 401 round trip was needed


def test_token_refreshed_once_on_401(apsis):
    server = apsis()
    hook = ApsisOneHook()
    hook.list_sections()
    server.emulator.revoke_tokens()  # e.g. credentials rotated: the cached token is refused
    assert hook.list_sections()[0]["discriminator"] == SECTION
    assert server.emulator.tokens_issued == 2
    assert requests_to(server, "GET /audience/sections") == 3  # one 401, then the retry


def test_expired_token_on_the_server_side_is_replaced(apsis):
    server = apsis(token_ttl=3600)
    hook = ApsisOneHook()
    hook.list_keyspaces()
    server.emulator.clock.advance(3601)  # the server's clock says expired, the hook's does not
    assert hook.list_keyspaces()
    assert server.emulator.tokens_issued == 2


def test_connection_test_button(apsis):
    server = apsis()
    assert ApsisOneHook().test_connection() == (True, f"connected to Apsis One at {server.url}: 1 section(s) visible")
    server.emulator.client_secret = "rotated"
    ok, message = ApsisOneHook().test_connection()
    assert not ok and "invalid client credentials" in message


def test_wrong_secret_is_an_auth_error_without_the_secret(apsis, monkeypatch):
    server = apsis()
    server.emulator.client_secret = "another-secret"
    with pytest.raises(VendorAuthError) as caught:
        ApsisOneHook().list_sections()
    assert "invalid client credentials" in str(caught.value)
    assert CLIENT_SECRET not in str(caught.value)


def test_async_status_shares_the_connections_token(apsis):
    server = apsis()
    hook = ApsisOneHook()
    ticket = hook.create_profile_import(SECTION, SPEC)

    async def status():
        ahook = ApsisOneHook()
        try:
            return await ahook.ajob_status(section=SECTION, import_id=ticket["import_id"])
        finally:
            await ahook.aclose()

    result = asyncio.run(status())
    assert result.state is JobState.RUNNING and result.vendor_status in ("queued", "waiting_for_file")
    assert server.emulator.tokens_issued == 1  # one token per connection per process, sync and async


# --- lookups and the spec -----------------------------------------------------------------------------
def test_attribute_names_resolve_to_the_current_version(apsis):
    apsis()
    hook = ApsisOneHook()
    versions = hook.resolve_attribute_versions(SECTION, {
        "first_name": "First name",  # version 2001 is deprecated, 2002 is current
        "city": "usercreated.attributes.city-x81q",
        "score": {"attribute_version_id": "4001"},
    })
    assert versions == {"first_name": "2002", "city": "3001", "score": "4001"}
    with pytest.raises(ImportSpecError, match="no attribute 'Shoe size'"):
        hook.resolve_attribute_versions(SECTION, {"size": "Shoe size"})


def test_lookups(apsis):
    apsis()
    hook = ApsisOneHook()
    assert "com.apsis1.keyspaces.email" in {k["discriminator"] for k in hook.list_keyspaces()}
    assert {t["name"] for t in hook.list_tags(SECTION)} == {"VIP", "Churn risk"}
    (consent_list,) = hook.list_consent_lists(SECTION)
    topics = hook.list_topics(SECTION, consent_list["discriminator"])
    assert "usercreated.topics.shoes-bcjvwfknxd" in {t["discriminator"] for t in topics}
    assert hook.resolve_tags(SECTION, ["vip", "usercreated.tags.churn-risk-a7c2"]) == {
        "vip": "usercreated.tags.vip-npqjeo3mbb", "usercreated.tags.churn-risk-a7c2": "usercreated.tags.churn-risk-a7c2"}


def test_missing_mapped_column_fails_before_any_request(apsis, tmp_path, monkeypatch):
    server = apsis()
    data = write_csv(tmp_path / "profiles.csv", [["email", "first_name"], ["a@b.se", "Ann"]])
    op = ApsisOneProfileImportOperator(task_id="imp", file=str(data), **IMPORT_KWARGS)
    with pytest.raises(ImportSpecError) as caught:
        op.submit({"ti": None})
    message = str(caught.value)
    assert str(data) in message and "line 1" in message and "'city' (attribute 'City')" in message
    assert "'vip' (tag 'VIP')" in message
    assert dict(server.emulator.counters) == {}  # not even a token request


def test_unknown_attribute_version_refused_by_the_api(apsis):
    apsis()
    with pytest.raises(VendorValidationError, match="unknown or deprecated"):
        ApsisOneHook().create_profile_import(SECTION, {
            "keyspace_mapping": {"keyspace_discriminator": "com.apsis1.keyspaces.email", "field_selector": "email"},
            "attribute_mappings": [{"field_selector": "fn", "attribute_version_id": "2001"}],
        })


# --- import, upload, status -------------------------------------------------------------------------
@pytest.mark.parametrize("as_url", [False, True], ids=["local-path", "object-storage-url"])
def test_import_round_trip_with_exact_upload_fields(apsis, tmp_path, as_url):
    server = apsis()
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    hook = ApsisOneHook()
    ticket = hook.create_profile_import(SECTION, SPEC)
    hook.upload_import_file(ticket, f"file://{data}" if as_url else data)
    status = wait_terminal(hook, ticket["import_id"])
    assert status.state is JobState.SUCCESS
    assert status.payload == {"status": "completed", "profiles_found": 3, "profiles_processed": 2, "profiles_failed": 1}
    snapshot = server.emulator.snapshot()
    assert snapshot["imports"][ticket["import_id"]]["uploads"] == 1
    ann = snapshot["profiles"][SECTION]["com.apsis1.keyspaces.email:ann@example.com"]
    assert ann["attributes"] == {"usercreated.attributes.first-name-k2j4": "Ann", "usercreated.attributes.city-x81q": "Malmo"}
    assert ann["tags"] == ["usercreated.tags.vip-npqjeo3mbb"]
    assert ann["consents"] == {"com.apsis1.channels.email|usercreated.topics.news-0k9d": "opt-in"}


@pytest.mark.parametrize("change, code", [
    (lambda f: f.pop("x-amz-meta-id"), "AccessDenied"),
    (lambda f: f.update({"x-amz-signature": "0" * 64}), "SignatureDoesNotMatch"),
    (lambda f: f.update({"key": f["key"].replace(".csv", "-x.csv")}), "AccessDenied"),
    (lambda f: f.update({"x-extra": "1"}), "AccessDenied"),
])
def test_upload_refused_unless_every_field_is_exact(apsis, tmp_path, change, code):
    server = apsis()
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    hook = ApsisOneHook()
    ticket = hook.create_profile_import(SECTION, SPEC)
    tampered = {**ticket, "file_upload_body": dict(ticket["file_upload_body"])}
    change(tampered["file_upload_body"])
    with pytest.raises(VendorAuthError) as caught:
        hook.upload_import_file(tampered, data)
    assert code in str(caught.value)
    assert ticket["file_upload_body"]["x-amz-signature"] not in str(caught.value)
    assert server.emulator.snapshot()["imports"][ticket["import_id"]]["uploads"] == 0


def test_upload_refused_once_the_url_expired(apsis, tmp_path):
    server = apsis(upload_url_ttl=0.3)
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    hook = ApsisOneHook()
    ticket = hook.create_profile_import(SECTION, SPEC)
    time.sleep(0.35)
    with pytest.raises(ImportSpecError, match="expired"):
        hook.upload_import_file(ticket, data)
    assert requests_to(server, "POST /file-import-uploads") == 0
    assert hook.job_status(section=SECTION, import_id=ticket["import_id"]).state is JobState.FAILED


def test_file_over_50_mb_points_at_the_split_step(tmp_path):
    big = tmp_path / "big.csv"
    with big.open("wb") as handle:  # sparse: no 50 MB written
        handle.write(b"email\n")
        handle.truncate(50 * 1000 * 1000 + 1)
    with pytest.raises(FileTooLargeError, match="split"):
        check_import_file(big, SPEC)


def test_import_in_error_reports_the_detail(apsis, tmp_path):
    apsis()
    data = write_csv(tmp_path / "profiles.csv", [["email", "first_name", "city", "vip", "news"], ["a@b.se", "A", "B", "1", "1"]])
    hook = ApsisOneHook()
    spec = {**SPEC.to_api({"first_name": "2002", "city": "3001"}, {"VIP": "usercreated.tags.vip-npqjeo3mbb"}),
            "keyspace_mapping": {"keyspace_discriminator": "com.apsis1.keyspaces.email", "field_selector": "mail"}}
    ticket = hook.create_profile_import(SECTION, spec)
    hook.upload_import_file(ticket, data)
    status = wait_terminal(hook, ticket["import_id"])
    assert status.state is JobState.FAILED and status.vendor_status == "error"
    assert "column(s) mail not found" in status.message


# --- the 3-slot limit ------------------------------------------------------------------------------
def test_fourth_import_waits_for_a_free_slot(apsis, tmp_path, monkeypatch):
    server = apsis(processing_seconds=3, slot_retry_after=0.5)
    connect(monkeypatch, server, max_attempts=1, slot_wait_interval=0.1)
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    hook = ApsisOneHook()
    for _ in range(3):
        hook.upload_import_file(hook.create_profile_import(SECTION, SPEC), data)
    with pytest.raises(VendorRateLimitError):  # no wait allowed
        hook.create_profile_import(SECTION, SPEC)
    ticket = hook.create_profile_import(SECTION, SPEC, wait_for_slot_until=time.time() + 10)
    assert ticket["import_id"] in server.emulator.snapshot()["imports"]
    assert server.emulator.snapshot()["max_active_seen"] == 3


def test_no_secret_or_token_in_logs(apsis, tmp_path, caplog, capfd):
    server = apsis()
    caplog.set_level(logging.DEBUG)
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    hook = ApsisOneHook()
    ticket = hook.create_profile_import(SECTION, SPEC)
    hook.upload_import_file(ticket, data)
    wait_terminal(hook, ticket["import_id"])
    server.emulator.revoke_tokens()
    hook.list_sections()
    token = hook._token
    out = caplog.text + "".join(capfd.readouterr())
    assert "Created Apsis One import" in out  # the logs were captured
    for secret in (CLIENT_SECRET, token, ticket["file_upload_body"]["x-amz-signature"], ticket["file_upload_body"]["policy"]):
        assert secret not in out
