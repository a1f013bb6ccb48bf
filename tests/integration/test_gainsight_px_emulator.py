"""The Gainsight PX emulator itself, over plain HTTP: auth, error bodies, validation, limits, scrolls."""

from __future__ import annotations

import pytest
import requests


@pytest.fixture
def gpx(emulator):
    # emulated time at 1/100 speed: the 1-second window cannot roll over mid-test on a slow machine
    return emulator("gainsight_px", rate_limit=3, time_scale=0.01)


def call(gpx, method, path, key="default", **kwargs):
    headers = {} if key is None else {"X-APTRINSIC-API-KEY": gpx.emulator.api_key if key == "default" else key}
    return requests.request(method, gpx.url + path, headers=headers, timeout=5, **kwargs)


def test_key_missing_401_wrong_403(gpx):
    assert call(gpx, "GET", "/v1/users", key=None).status_code == 401
    response = call(gpx, "GET", "/v1/users", key="nope")
    assert response.status_code == 403
    assert response.json()["externalapierror"]["status"] == "FORBIDDEN"


def test_create_validation_error_body(gpx):
    response = call(gpx, "POST", "/v1/users", json={"email": "a@b.c", "signUpDate": "2019-01-01"})
    assert response.status_code == 400
    error = response.json()["externalapierror"]
    assert set(error) == {"status", "message", "debugMessage", "subErrors"}
    fields = {sub["field"] for sub in error["subErrors"]}
    assert fields == {"identifyId", "propertyKeys", "signUpDate"}
    unknown_product = call(gpx, "POST", "/v1/users", json={"identifyId": "u", "propertyKeys": ["AP-OTHER-2"]})
    assert unknown_product.status_code == 400


def test_created_then_conflict_and_put_404(gpx):
    body = {"identifyId": "u", "propertyKeys": [gpx.emulator.product_key]}
    assert call(gpx, "POST", "/v1/users", json=body).status_code == 201
    assert call(gpx, "POST", "/v1/users", json=body).status_code == 409
    missing = call(gpx, "PUT", "/v1/users/other", json={"title": "x"})
    assert missing.status_code == 404 and missing.json()["externalapierror"]["status"] == "NOT_FOUND"


def test_rate_limit_429_with_retry_after(gpx):
    statuses = [call(gpx, "GET", "/v1/users/x").status_code for _ in range(5)]
    assert statuses[:3] == [404, 404, 404] and statuses[3:] == [429, 429]
    response = call(gpx, "GET", "/v1/users/x")
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["externalapierror"]["status"] == "TOO_MANY_REQUESTS"
    assert gpx.emulator.throttled == 3


def test_list_bounds_scroll_and_legacy_contains_operator(emulator):
    gpx = emulator("gainsight_px", rate_limit=None)
    gpx.emulator.seed(users=[{"identifyId": f"u{i}", "email": f"u{i}@gainsight.com" if i < 2 else "x@y.z"} for i in range(3)])
    assert call(gpx, "GET", "/v1/users", params={"pageSize": 1001}).status_code == 400
    assert call(gpx, "GET", "/v1/users", params={"scrollId": "bogus"}).status_code == 400
    page = call(gpx, "GET", "/v1/users", params={"pageSize": 1, "filter": "email=@GAINSIGHT"}).json()
    assert page["totalHits"] == 2 and len(page["users"]) == 1 and page["scrollId"]
    last = call(gpx, "GET", "/v1/users", params={"pageSize": 1, "scrollId": page["scrollId"]}).json()
    assert [u["identifyId"] for u in last["users"]] == ["u1"] and last["scrollId"]  # still a scrollId
    assert call(gpx, "GET", "/v1/users", params={"filter": "email"}).status_code == 400


def test_seed_control_route_and_reset(emulator):
    gpx = emulator("gainsight_px")
    response = requests.post(gpx.url + "/_emulator/seed", json={"accounts": [{"id": "a", "name": "A"}]}, timeout=5)
    assert response.json() == {"users": 0, "accounts": 1}
    assert gpx.emulator.counters == {}  # control routes are not vendor requests
    gpx.emulator.reset()
    assert gpx.emulator.snapshot()["accounts"] == {}
