"""The Localytics emulator against its public contract (help.uplandsoftware.com/localytics/dev/import-apis.html),
over real HTTP: rules the page states are enforced, rules it does not state are not."""

from __future__ import annotations

import json

import pytest
import requests

AUTH = ("localytics-key", "localytics-secret")
IDS = b'{"customer_id":"a"}\n'


class Client(requests.Session):
    """A plain HTTP client on the emulator's base URL: the contract is checked without the hook."""

    def __init__(self, base_url: str):
        super().__init__()
        self.base_url, self.auth = base_url, AUTH

    def request(self, method, url, **kwargs):
        kwargs.setdefault("timeout", 10)
        return super().request(method, f"{self.base_url}{url}", **kwargs)


@pytest.fixture
def http(emulator):
    clients = []

    def start(**config):
        server = emulator("localytics", **config)
        clients.append(Client(server.url))
        return server, clients[-1]

    yield start
    for client in clients:
        client.close()


def create_audience(client, app_id, name):
    data = {"app_id": app_id, "audience_name": name, "identifier_type": "customer_id"}
    return client.post("/v1/imports/audiences/list/", data=data, files={"file": ("ids.json", IDS)})


def upload(client, text):
    return client.post("/v1/imports/profiles/upload", data={"org_id": "60", "format": "json"},
                       files={"file": ("p.json", text.encode())})


def test_the_audience_list_cap_is_per_api_key_not_per_app(http):
    # "Audience Imports enforces the following rate limit per API Key: ... 500 Audience Lists"
    _, client = http(max_lists=2)
    assert create_audience(client, "app-1", "one").status_code == 202
    assert create_audience(client, "app-2", "two").status_code == 202
    refused = create_audience(client, "app-1", "three")
    assert refused.status_code == 400 and "2 audience lists" in refused.json()["error"]


def test_audience_status_polls_have_their_own_limit(http):
    # the page gives the audience imports and their status endpoint a limit each (60 per minute)
    _, client = http(audience_limit=[1, 60], audience_status_limit=[1, 60])
    activity_id = create_audience(client, "app-1", "one").json()["activity_id"]
    assert client.get(f"/v1/imports/audiences/list/status/{activity_id}").status_code == 200
    assert client.get(f"/v1/imports/audiences/list/status/{activity_id}").status_code == 429
    assert create_audience(client, "app-1", "two").status_code == 429


def test_a_missing_audience_parameter_is_404_parameter_not_found(http):
    # the audience HTTP response codes: "404 Parameter not found"
    _, client = http()
    data = {"app_id": "app-1", "identifier_type": "customer_id"}
    response = client.post("/v1/imports/audiences/list/", data=data, files={"file": ("ids.json", IDS)})
    assert response.status_code == 404 and "audience_name" in response.json()["error"]


def test_rules_the_page_does_not_state_are_lenient(http, emulator):
    server, client = http(time_scale=1000)
    lines = [
        {"customer_id": "a", "changes": []},  # no rule says changes may not be empty
        {"customer_id": "b", "changes": [{"op": "set-add", "attr": "tags", "value": []}]},  # nor a set
        {"customer_id": "c", "changes": [{"op": "delete", "attr": "x", "value": None}]},  # delete ignores a value
    ]
    activity_id = upload(client, "".join(json.dumps(line) + "\n" for line in lines)).json()["activity_id"]
    server.emulator.clock.advance(60)
    status = client.get(f"/v1/imports/profiles/status/{activity_id}").json()
    assert status["status"] == "Completed"
    assert status["upload_statistics"]["failed_imports"] == 0


def test_replacing_a_list_under_another_app_id_is_not_refused(http):
    # the page does not say what a replace naming another app of the key does: lenient
    server, client = http(time_scale=1000)
    activity_id = create_audience(client, "app-1", "one").json()["activity_id"]
    server.emulator.clock.advance(60)
    list_id = client.get(f"/v1/imports/audiences/list/status/{activity_id}").json()["upload_statistics"][
        "audience_list_id"]
    data = {"app_id": "app-2", "identifier_type": "customer_id", "audience_list_id": list_id}
    response = client.put(f"/v1/imports/audiences/list/{list_id}", data=data, files={"file": ("ids.json", IDS)})
    assert response.status_code == 202


def test_documented_rules_are_enforced(http):
    server, client = http(time_scale=1000)
    assert requests.post(f"{server.url}/v1/imports/profiles/upload", auth=("x", "y"), timeout=10).status_code == 401
    both = client.post("/v1/imports/profiles/upload", data={"org_id": "60", "app_id": "app-1", "format": "json"},
                       files={"file": ("p.json", b"")})
    assert both.status_code == 400  # "either ... an organization or specific application, but not both"
    other_org = client.post("/v1/imports/profiles/upload", data={"org_id": "61", "format": "json"},
                            files={"file": ("p.json", b"")})
    assert other_org.status_code == 403
    assert client.get("/v1/imports/exports/status/x").status_code == 404  # unknown source type
    bad = [
        {"customer_id": "a", "changes": [{"op": "increment", "attr": "n", "value": "1"}]},
        {"customer_id": "b", "changes": [{"op": "set-remove", "attr": "t", "value": "x"}]},
        {"customer_id": "c", "changes": [{"op": "assign", "attr": "s", "value": "x" * 256}]},
        {"customer_id": "d", "changes": [{"op": "rename", "attr": "s", "value": "x"}]},
        {"customer_id": "e"},
    ]
    activity_id = upload(client, "".join(json.dumps(line) + "\n" for line in bad)).json()["activity_id"]
    server.emulator.clock.advance(60)
    status = client.get(f"/v1/imports/profiles/status/{activity_id}").json()
    assert status["status"] == "Failed" and status["upload_statistics"]["failed_imports"] == 5
