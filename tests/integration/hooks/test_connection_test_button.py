"""The connection form's Test button (``test_connection()``) of all four hooks, over real HTTP: the
emulators for success and refused credentials, a closed port, and tiny servers on 127.0.0.1 that are
not the vendor, refuse a permission or echo the credentials back. No message carries a secret."""

from __future__ import annotations

import base64
import json
import socket

import pytest

from airflow_provider_profiles.hooks.apsis_one import ApsisOneHook
from airflow_provider_profiles.hooks.gainsight_px import GainsightPXHook
from airflow_provider_profiles.hooks.localytics import LocalyticsHook
from airflow_provider_profiles.hooks.mediarithmics import MediarithmicsHook
from tests.misbehaving_server import response

HOOKS = {
    "gainsight_px": GainsightPXHook,
    "apsis_one": ApsisOneHook,
    "localytics": LocalyticsHook,
    "mediarithmics": MediarithmicsHook,
}
VENDORS = list(HOOKS)
# credentials of the tiny servers' connections: long enough for any masker
LOGIN, SECRET = "login-id-6f1e2d", "secret-value-93ab1c"
CONN_ID = "button_test"


def define(airflow_connection, vendor: str, **fields) -> None:
    """The connection ``CONN_ID`` of ``vendor`` (emulator fields, or a tiny server's base URL)."""
    fields.setdefault("conn_type", vendor)
    airflow_connection(CONN_ID, **fields)


def pressed(vendor: str) -> tuple[bool, str]:
    return HOOKS[vendor](CONN_ID).test_connection()


def emulated(emulator, airflow_connection, vendor: str, **changes):
    server = emulator(vendor)
    fields = {**server.emulator.connection(), **changes}
    define(airflow_connection, vendor, **fields)
    return server, fields


def secrets_of(fields: dict) -> list[str]:
    return [value for value in (fields.get("login"), fields.get("password")) if value]


def tiny_server_connection(servers, airflow_connection, vendor: str, answer) -> None:
    """A connection to a tiny server answering ``answer(received)``; Apsis One's token route gets a
    token first (its probe starts with one)."""

    def reply(received):
        if vendor == "apsis_one" and received.path.endswith("/oauth/token"):
            return response(200, json.dumps({"access_token": "tok-4d2c", "expires_in": 3600, "token_type": "Bearer"}))
        return answer(received)

    server = servers(reply)
    define(airflow_connection, vendor, login=LOGIN, password=SECRET,
           extra={"base_url": f"{server.url}/v1", "datamart_id": "1000", "org_id": "60"})


@pytest.mark.parametrize("vendor", VENDORS)
def test_success_says_where_and_what(emulator, airflow_connection, vendor):
    server, fields = emulated(emulator, airflow_connection, vendor)
    ok, message = pressed(vendor)
    assert ok, message
    assert message.startswith(f"connected to {HOOKS[vendor].hook_name} at {server.url}")
    assert not any(secret in message for secret in secrets_of(fields))


def test_success_details(emulator, airflow_connection):
    emulated(emulator, airflow_connection, "apsis_one")
    assert pressed("apsis_one")[1].endswith(": 1 section(s) visible")
    emulated(emulator, airflow_connection, "localytics")
    assert pressed("localytics")[1].endswith(": 2 app(s) visible")
    server, _ = emulated(emulator, airflow_connection, "mediarithmics")
    assert pressed("mediarithmics")[1].endswith(f": datamart {server.emulator.datamart_ids[0]}: 0 document import(s)")
    emulated(emulator, airflow_connection, "gainsight_px")
    assert pressed("gainsight_px")[1].endswith(": the API key reads users (0 in total)")


@pytest.mark.parametrize("vendor", VENDORS)
def test_wrong_secret_is_refused_credentials(emulator, airflow_connection, vendor):
    wrong = "wrong-secret-5e8f0a"
    _, fields = emulated(emulator, airflow_connection, vendor, password=wrong)
    ok, message = pressed(vendor)
    assert not ok
    assert f"{HOOKS[vendor].hook_name} refused" in message and "credentials are wrong" in message or \
        "refused the credentials" in message, message
    assert wrong not in message and not any(secret in message for secret in secrets_of(fields))


@pytest.mark.parametrize("vendor", VENDORS)
def test_unreachable_port_names_the_host(airflow_connection, vendor):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    define(airflow_connection, vendor, login=LOGIN, password=SECRET,
           extra={"base_url": f"http://127.0.0.1:{port}/v1", "datamart_id": "1000"})
    ok, message = pressed(vendor)
    assert not ok
    assert message.startswith(f"cannot reach http://127.0.0.1:{port}/v1"), message


@pytest.mark.parametrize("vendor", VENDORS)
def test_html_answer_is_not_the_vendor(servers, airflow_connection, vendor):
    tiny_server_connection(servers, airflow_connection, vendor,
                           lambda received: response(200, "<html><body>Welcome</body></html>", content_type="text/html"))
    ok, message = pressed(vendor)
    assert not ok
    assert f"does not answer like the {HOOKS[vendor].hook_name} API" in message, message
    assert "text/html" in message


@pytest.mark.parametrize("vendor", VENDORS)
def test_json_of_another_shape_is_not_the_vendor(servers, airflow_connection, vendor):
    tiny_server_connection(servers, airflow_connection, vendor, lambda received: response(200, '{"hello": "world"}'))
    ok, message = pressed(vendor)
    assert not ok
    assert f"does not answer like the {HOOKS[vendor].hook_name} API" in message, message


@pytest.mark.parametrize("vendor", VENDORS)
def test_missing_permission_names_the_read(servers, airflow_connection, vendor):
    tiny_server_connection(servers, airflow_connection, vendor,
                           lambda received: response(403, '{"message": "this key may not read this resource"}'))
    ok, message = pressed(vendor)
    assert not ok
    assert "lack the permission to read" in message and "may not read this resource" in message, message


@pytest.mark.parametrize("vendor", VENDORS)
def test_echoed_credentials_never_reach_the_message(servers, airflow_connection, vendor):
    def echo(received):
        basic = received.headers.get("authorization", "").partition("Basic ")[2]
        decoded = base64.b64decode(basic).decode() if basic else ""
        said = f"refused {received.headers} {received.body.decode()} {decoded}"
        return response(401, json.dumps({"message": said, "error": said, "detail": said}))

    tiny_server_connection(servers, airflow_connection, vendor, echo)
    ok, message = pressed(vendor)
    assert not ok and "refused" in message
    basic = base64.b64encode(f"{LOGIN}:{SECRET}".encode()).decode()
    assert SECRET not in message and basic not in message, message
    if vendor in ("gainsight_px", "localytics", "mediarithmics"):  # the request carried the secret
        assert "***" in message, message


@pytest.mark.parametrize("vendor", VENDORS)
def test_vendor_down_says_try_later(emulator, airflow_connection, vendor):
    server, _ = emulated(emulator, airflow_connection, vendor)
    server.emulator.inject("status", match="^GET ", count=5, status=503)
    ok, message = pressed(vendor)
    assert not ok
    assert "HTTP 503" in message and "try again later" in message, message
    assert sum(server.emulator.faults_served.values()) == 2  # one immediate retry, no long backoff


@pytest.mark.parametrize("vendor", VENDORS)
def test_unreadable_extras_are_settings(airflow_connection, vendor):
    define(airflow_connection, vendor, password=SECRET, extra="{not json")
    ok, message = pressed(vendor)
    assert not ok and CONN_ID in message and SECRET not in message, message
    # Airflow >= 3.2 hands the hook the text, which names the fault; older Airflow refuses an
    # environment connection with such extras itself, as not defined
    assert ("the connection's settings cannot be used" in message and "not valid JSON" in message) or \
        "check that its extra field is a JSON object" in message, message


def test_mediarithmics_datamart_missing_or_unknown(emulator, airflow_connection):
    server, fields = emulated(emulator, airflow_connection, "mediarithmics")
    define(airflow_connection, "mediarithmics", password=fields["password"], extra={"base_url": f"{server.url}/v1"})
    ok, message = pressed("mediarithmics")
    assert not ok and "datamart_id" in message, message
    define(airflow_connection, "mediarithmics", password=fields["password"],
           extra={"base_url": f"{server.url}/v1", "datamart_id": "4242"})
    ok, message = pressed("mediarithmics")
    assert not ok and "datamart_id 4242 is not found or not visible to this token" in message, message


def test_wrong_base_path_is_not_the_vendor(emulator, airflow_connection):
    """A 404 that is not the vendor's error envelope (a wrong base path) is not a missing datamart."""
    server, fields = emulated(emulator, airflow_connection, "mediarithmics")
    define(airflow_connection, "mediarithmics", password=fields["password"],
           extra={"base_url": f"{server.url}/v2", "datamart_id": server.emulator.datamart_ids[0]})
    ok, message = pressed("mediarithmics")
    assert not ok and "does not answer like the mediarithmics API" in message, message


def test_airflow_calls_it_for_the_form(emulator, airflow_connection):
    """Airflow's own path (``Connection.test_connection``: the provider's hook by conn type)."""
    from airflow.models.connection import Connection

    server = emulator("localytics")
    fields = server.emulator.connection()
    conn = Connection(conn_id=CONN_ID, conn_type="localytics", login=fields["login"], password=fields["password"],
                      extra=json.dumps(fields["extra"]))
    define(airflow_connection, "localytics", **fields)
    assert conn.test_connection() == (True, f"connected to Localytics at {server.url}/v1: 2 app(s) visible")


def test_apsis_one_token_answer_without_a_token_is_not_the_vendor(servers, airflow_connection):
    server = servers(lambda received: response(200, '{"hello": "world"}'))
    define(airflow_connection, "apsis_one", login=LOGIN, password=SECRET, extra={"base_url": server.url})
    ok, message = pressed("apsis_one")
    assert not ok
    assert "does not answer like the Apsis One API (POST /oauth/token -> HTTP 200: the answer is not a token)" in message
