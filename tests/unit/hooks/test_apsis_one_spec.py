"""Apsis One import specification, file checks, status mapping and the streamed upload body (no network)."""

from __future__ import annotations

import email
import email.policy
import io

import pytest

from airflow_provider_profiles.hooks.apsis_one import (
    ApsisOneHook,
    ConsentMapping,
    FileTooLargeError,
    ImportSpec,
    ImportSpecError,
    MultipartFileStream,
    check_import_file,
    read_header,
)
from airflow_provider_profiles.hooks.base import JobState
from airflow_provider_profiles.storage import open_upload


def spec(**overrides) -> ImportSpec:
    args = dict(keyspace="email", keyspace_column="email-address", attributes={"address": "Address"},
                tags={"is_vip": "VIP"}, static_tags=["Imported"],
                consents=[{"column": "mens-clothing-shoes", "topic": "usercreated.topics.shoes-bcjvwfknxd"}])
    return ImportSpec(**{**args, **overrides})


def test_payload_matches_the_documented_shape():
    body = spec(merge_profiles=True, clear_existing_attributes=True).to_api(
        {"address": "1234"}, {"VIP": "usercreated.tags.vip", "Imported": "usercreated.tags.imported"})
    assert body == {
        "keyspace_mapping": {"keyspace_discriminator": "com.apsis1.keyspaces.email", "field_selector": "email-address",
                             "merge_profiles": True},
        "options": {"update_existing_profiles": True, "clear_existing_attributes": True},
        "attribute_mappings": [{"field_selector": "address", "attribute_version_id": "1234"}],
        "tag_mappings": [{"field_selector": "is_vip", "tag_discriminator": "usercreated.tags.vip"},
                         {"tag_discriminator": "usercreated.tags.imported"}],
        "consent_mappings": [{"consents": [{
            "field_selector": "mens-clothing-shoes", "channel_discriminator": "com.apsis1.channels.email",
            "topic_discriminator": "usercreated.topics.shoes-bcjvwfknxd", "type": "opt-in",
            "resubscribe_if_opted_out": False}]}],
    }


def test_consents_grouped_by_address_column_and_extra_keys_passed_through():
    body = spec(consents=[
        ConsentMapping(column="sms_news", topic="t1", channel="sms", type="opt-out", address_field="phone"),
        {"column": "news", "topic": "t2"},
    ], extra={"folder_mappings": [{"folder_id": "f1"}]}).to_api({"address": "1"}, {"VIP": "v", "Imported": "i"})
    assert body["consent_mappings"][0]["address_field_selector"] == "phone"
    assert body["consent_mappings"][0]["consents"][0]["channel_discriminator"] == "com.apsis1.channels.sms"
    assert body["consent_mappings"][0]["consents"][0]["type"] == "opt-out"
    assert "address_field_selector" not in body["consent_mappings"][1]
    assert body["folder_mappings"] == [{"folder_id": "f1"}]


def test_bad_plain_arguments_are_refused():
    with pytest.raises(ImportSpecError, match="opt-in"):
        spec(consents=[{"column": "c", "topic": "t", "type": "maybe"}])
    with pytest.raises(ImportSpecError, match="keyspace"):
        spec(keyspace_column="")


def test_header_check_names_file_line_and_columns():
    s = spec()
    s.check_header(["email-address", "address", "is_vip", "mens-clothing-shoes", "unused"], "p.csv")
    with pytest.raises(ImportSpecError) as caught:
        s.check_header(["email-address", "addr"], "p.csv")
    message = str(caught.value)
    assert message.startswith("p.csv: line 1:")
    assert "'address' (attribute 'Address')" in message and "'is_vip' (tag 'VIP')" in message
    assert "consent topic" in message
    with pytest.raises(ImportSpecError, match="line 1, column 3: duplicate column 'address' \\(also column 2\\)"):
        s.check_header(["email-address", "address", "address"], "p.csv")


def test_header_read_from_first_line_only(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes('\ufeff"email-address",address\r\nx@y.se,"a, b"\n'.encode())
    assert read_header(path) == ["email-address", "address"]


def test_file_checks(tmp_path):
    s = ImportSpec(keyspace="email", keyspace_column="email")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(ImportSpecError, match="empty.csv: line 1: the file is empty"):
        check_import_file(empty, s)
    big = tmp_path / "big.csv"
    with big.open("wb") as handle:
        handle.write(b"email\n")
        handle.truncate(50 * 1000 * 1000 + 1)
    with pytest.raises(FileTooLargeError, match="50 MB import limit; split it first"):
        check_import_file(big, s)
    ok = tmp_path / "ok.csv"
    ok.write_bytes(b"email\na@b.se\n")
    assert check_import_file(ok, s) == 13


@pytest.mark.parametrize("payload, state, message", [
    ({"result": {"status": "queued"}}, JobState.RUNNING, None),
    ({"result": {"status": "waiting_for_file"}}, JobState.RUNNING, None),
    ({"result": {"status": "in_progress"}}, JobState.RUNNING, None),
    ({"result": {"status": "completed", "profiles_found": 3}}, JobState.SUCCESS, None),
    ({"result": {"status": "error", "error": {"detail": "bad file"}}}, JobState.FAILED, "the import ended in error: bad file"),
    ({"result": {"status": "error"}}, JobState.FAILED, "the import ended in error: no detail given"),
])
def test_status_mapping(payload, state, message):
    status = ApsisOneHook.to_job_status(payload)
    assert status.state is state
    assert status.message == message


def parse_multipart(stream: MultipartFileStream) -> list[tuple[str, str | None, bytes]]:
    raw = f"Content-Type: {stream.content_type}\r\n\r\n".encode() + stream.read()
    message = email.message_from_bytes(raw, policy=email.policy.HTTP)
    return [(part.get_param("name", header="content-disposition"), part.get_filename(), part.get_payload(decode=True))
            for part in message.iter_parts()]


def test_multipart_stream_has_every_field_then_the_file(tmp_path):
    data = tmp_path / "p.csv"
    content = b"email\n" + b"".join(f"user{i}@example.com\n".encode() for i in range(50_000))
    data.write_bytes(content)
    fields = {"key": "1/abc.csv", "policy": "cG9saWN5", "content-type": "text/csv", "x-amz-signature": "ff"}
    with open_upload(data) as upload:
        stream = MultipartFileStream(fields, upload)
        stream.chunk_size = 4096  # the file is read in pieces
        total = len(stream)
        parts = parse_multipart(stream)
        assert [p[0] for p in parts] == ["key", "policy", "content-type", "x-amz-signature", "file"]
        assert parts[-1][1] == "p.csv" and parts[-1][2] == content
        assert stream.tell() == total
        stream.seek(0)  # a retry resends the whole body
        chunks = iter(lambda: stream.read(8192), b"")
        assert sum(len(c) for c in chunks) == total


def test_multipart_stream_only_rewinds():
    stream = MultipartFileStream.__new__(MultipartFileStream)
    stream._position, stream._length = 5, 10
    with pytest.raises(io.UnsupportedOperation):
        stream.seek(3)


@pytest.mark.parametrize("conn, url", [
    ({}, "https://api.apsis.one"),
    ({"extra": {"region": "apac"}}, "https://api-apac.apsis.one"),
    ({"host": "api.example.net", "extra": {"region": "apac"}}, "https://api.example.net"),
    ({"extra": {"base_url": "http://127.0.0.1:8080/"}}, "http://127.0.0.1:8080"),
])
def test_base_url_from_region_or_host(monkeypatch, conn, url):
    import json

    monkeypatch.setenv("AIRFLOW_CONN_APSIS_ONE_DEFAULT", json.dumps(
        {"conn_type": "apsis_one", "login": "id", "password": "secret", **conn}))
    hook = ApsisOneHook()
    hook.connection  # noqa: B018
    assert hook.base_url == url


def test_unknown_region_is_refused(monkeypatch):
    import json

    monkeypatch.setenv("AIRFLOW_CONN_APSIS_ONE_DEFAULT", json.dumps(
        {"conn_type": "apsis_one", "login": "id", "password": "secret", "extra": {"region": "us"}}))
    with pytest.raises(ValueError, match="unknown region 'us'"):
        ApsisOneHook().connection  # noqa: B018
