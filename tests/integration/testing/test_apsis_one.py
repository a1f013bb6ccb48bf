"""The Apsis One emulator itself, over raw HTTP: it must refuse what the real API and bucket refuse."""

from __future__ import annotations

import requests

from tests.integration.hooks.test_apsis_one_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    FAST,
    SECTION,
)

SPEC = {"keyspace_mapping": {"keyspace_discriminator": "com.apsis1.keyspaces.email", "field_selector": "email"}}


def session_for(server) -> requests.Session:
    token = requests.post(f"{server.url}/oauth/token", json={
        "grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}).json()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token['access_token']}"
    return session


def create(server, session) -> dict:
    response = session.post(f"{server.url}/v2/audience/sections/{SECTION}/imports", json=SPEC)
    assert response.status_code == 201, response.text
    return response.json()


def test_errors_are_rfc_7807(emulator):
    server = emulator("apsis_one", **FAST)
    response = requests.get(f"{server.url}/audience/sections")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json() == {"type": "about:blank", "title": "Unauthorized", "status": 401, "detail": "missing bearer token"}
    bad = requests.post(f"{server.url}/oauth/token", json={"grant_type": "password"})
    assert bad.status_code == 400 and bad.json()["detail"] == "grant_type must be client_credentials"


def test_fourth_simultaneous_import_gets_429_with_retry_after(emulator):
    server = emulator("apsis_one", **FAST)
    session = session_for(server)
    for _ in range(3):
        create(server, session)
    response = session.post(f"{server.url}/v2/audience/sections/{SECTION}/imports", json=SPEC)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.json()["status"] == 429 and "3 simultaneous imports" in response.json()["detail"]


def test_expired_waiting_import_frees_its_slot(emulator):
    server = emulator("apsis_one", **{**FAST, "upload_url_ttl": 60})
    session = session_for(server)
    tickets = [create(server, session) for _ in range(3)]
    server.emulator.clock.advance(61)
    status = session.get(f"{server.url}/audience/sections/{SECTION}/imports/{tickets[0]['import_id']}").json()
    assert status["result"]["status"] == "error"
    server.emulator.tokens.clear()
    create(server, session_for(server))  # a slot is free again


def test_upload_needs_the_file_last_and_text_csv(emulator):
    server = emulator("apsis_one", **FAST)
    session = session_for(server)
    ticket = create(server, session)
    fields = list(ticket["file_upload_body"].items())
    file_first = [("file", ("p.csv", b"email\na@b.se\n", "text/csv"))] + [(k, (None, v)) for k, v in fields]
    response = requests.post(ticket["file_upload_url"], files=file_first)
    assert response.status_code == 400 and "<Code>InvalidArgument</Code>" in response.text
    wrong_type = dict(ticket["file_upload_body"], **{"content-type": "application/json"})
    response = requests.post(ticket["file_upload_url"], data=wrong_type, files={"file": ("p.csv", b"email\n")})
    assert response.status_code == 403 and "Policy Condition failed: content-type" in response.text
    response = requests.post(ticket["file_upload_url"], data=ticket["file_upload_body"],
                             files={"file": ("p.csv", b"email\na@b.se\n", "text/csv")})
    assert response.status_code == 200
    # a repeated upload (a retry after a lost response) is accepted like S3 does, and not processed twice
    again = requests.post(ticket["file_upload_url"], data=ticket["file_upload_body"], files={"file": ("p.csv", b"email\n")})
    assert again.status_code == 200
    imported = server.emulator.snapshot()["imports"][ticket["import_id"]]
    assert imported["uploads"] == 2


def test_status_timeline(emulator):
    server = emulator("apsis_one", **{**FAST, "queued_seconds": 10, "processing_seconds": 10})
    session = session_for(server)
    ticket = create(server, session)
    url = f"{server.url}/audience/sections/{SECTION}/imports/{ticket['import_id']}"
    seen = [session.get(url).json()["result"]["status"]]
    server.emulator.clock.advance(10)
    seen.append(session.get(url).json()["result"]["status"])
    requests.post(ticket["file_upload_url"], data=ticket["file_upload_body"],
                  files={"file": ("p.csv", b"email\na@b.se\nnope\n", "text/csv")}).raise_for_status()
    seen.append(session.get(url).json()["result"]["status"])
    server.emulator.clock.advance(10)
    final = session.get(url).json()
    seen.append(final["result"]["status"])
    assert seen == ["queued", "waiting_for_file", "in_progress", "completed"]
    assert final == {"import_id": ticket["import_id"], "result": {
        "status": "completed", "profiles_found": 2, "profiles_processed": 1, "profiles_failed": 1}}
    assert session.get(f"{server.url}/audience/sections/other/imports/{ticket['import_id']}").status_code == 404


def test_stored_profiles_are_capped_but_counted(emulator):
    server = emulator("apsis_one", **{**FAST, "processing_seconds": 0, "max_stored_profiles": 1})
    session = session_for(server)
    ticket = create(server, session)
    requests.post(ticket["file_upload_url"], data=ticket["file_upload_body"],
                  files={"file": ("p.csv", b"email\na@b.se\nc@d.se\n", "text/csv")}).raise_for_status()
    server.emulator.clock.advance(1)
    result = session.get(f"{server.url}/audience/sections/{SECTION}/imports/{ticket['import_id']}").json()["result"]
    assert (result["profiles_found"], result["profiles_processed"]) == (2, 2)
    assert server.emulator.summary()["profiles_stored"] == 1
