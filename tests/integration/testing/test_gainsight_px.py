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


def test_created_then_possible_duplicate_and_put_404(gpx):
    body = {"identifyId": "u", "propertyKeys": [gpx.emulator.product_key]}
    assert call(gpx, "POST", "/v1/users", json=body).status_code == 201
    duplicate = call(gpx, "POST", "/v1/users", json=body)
    assert duplicate.status_code == 400 and "possible duplicate" in duplicate.json()["externalapierror"]["message"]
    missing = call(gpx, "PUT", "/v1/users/other", json={"title": "x", "propertyKeys": ["AP-EMULATOR-2"]})
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


# --- the corrected contract ------------------------------------------------------------------------
@pytest.fixture
def open_gpx(emulator):
    return emulator("gainsight_px", rate_limit=None)


def test_every_write_needs_property_keys(open_gpx):
    open_gpx.emulator.seed(users=[{"identifyId": "u"}], accounts=[{"id": "a", "name": "A"}])
    for method, path, body in [("PUT", "/v1/users/u", {"title": "x"}), ("PUT", "/v1/accounts/a", {"name": "B"}),
                               ("POST", "/v1/accounts", {"id": "b", "name": "B"}),
                               ("PUT", "/v1/users/update", {"identifyId": "u"})]:
        response = call(open_gpx, method, path, json=body)
        assert response.status_code == 400, (method, path)
        assert [s["field"] for s in response.json()["externalapierror"]["subErrors"]] == ["propertyKeys"]
    keys = {"propertyKeys": ["AP-EMULATOR-2"]}
    assert call(open_gpx, "PUT", "/v1/accounts/a", json={"name": "B", **keys}).status_code == 204


def test_attribute_model_route_and_typed_writes(emulator):
    gpx = emulator("gainsight_px", rate_limit=None, custom_attributes={"user": {"renewal": "DATE_TIME", "vip": "BOOLEAN"}})
    model = call(gpx, "GET", "/v1/admin/model/user/attributes").json()
    types = {a["apiName"]: (a["type"], a["origin"]) for a in model}
    assert types["renewal"] == ("DATE_TIME", "CUSTOM") and types["signUpDate"] == ("DATE_TIME", "DEFAULT")
    assert types["id"] == ("STRING", "DEFAULT") and "acceptDate" not in types
    assert call(gpx, "GET", "/v1/admin/model/account/attributes").status_code == 200
    assert call(gpx, "GET", "/v1/admin/model/lead/attributes").status_code == 404
    body = {"identifyId": "u", "propertyKeys": ["AP-EMULATOR-2"],
            "customAttributes": {"renewal": "1548700000000", "vip": "maybe", "free": {"x": 1}}, "score": "5"}
    refused = call(gpx, "POST", "/v1/users", json=body)
    fields = {s["field"] for s in refused.json()["externalapierror"]["subErrors"]}
    assert fields == {"customAttributes.renewal", "customAttributes.vip", "score"}  # unknown ones pass
    body.update(customAttributes={"renewal": 1548700000000, "vip": "true"}, score=5)
    assert call(gpx, "POST", "/v1/users", json=body).status_code == 201


def test_body_id_routes_path_refusals_and_hard_delete(open_gpx):
    keys = {"propertyKeys": ["AP-EMULATOR-2"]}
    open_gpx.emulator.seed(users=[{"identifyId": "a/b"}, {"identifyId": "50%"}, {"identifyId": "update"}],
                           accounts=[{"id": "x;y", "name": "X"}])
    assert call(open_gpx, "GET", "/v1/users/a%2Fb").status_code == 400
    assert call(open_gpx, "GET", "/v1/users/50%25").status_code == 400
    assert call(open_gpx, "PUT", "/v1/users/update", json={"identifyId": "a/b", "title": "t", **keys}).status_code == 204
    assert open_gpx.emulator.snapshot()["users"]["a/b"]["title"] == "t"
    assert call(open_gpx, "PUT", "/v1/accounts/update", json={"id": "x;y", "plan": "p", **keys}).status_code == 204
    assert call(open_gpx, "GET", "/v1/users/update").status_code == 200  # a GET still reads the id "update"
    assert call(open_gpx, "DELETE", "/v1/users/delete", json={"identifyId": "50%"},
                params={"hardDelete": "true"}).status_code == 204
    assert call(open_gpx, "DELETE", "/v1/accounts/delete", json={"id": "x;y"}).status_code == 204
    assert call(open_gpx, "DELETE", "/v1/users/update", params={"hardDelete": "yes"}).status_code == 400
    assert call(open_gpx, "DELETE", "/v1/users/delete", json={"identifyId": "nobody"}).status_code == 404
    assert open_gpx.emulator.snapshot()["deletions"] == [("users", "50%", True), ("accounts", "x;y", False)]


def test_custom_events_and_not_like_filter(open_gpx):
    event = {"identifyId": "u", "eventName": "Search", "date": 1560499354771, "attributes": {"Source": "CSV"},
             "propertyKey": "AP-EMULATOR-2"}
    assert call(open_gpx, "POST", "/v1/events/custom", json=event).status_code == 201
    refused = call(open_gpx, "POST", "/v1/events/custom", json={"identifyId": "u", "date": "2019-06-14"})
    assert {s["field"] for s in refused.json()["externalapierror"]["subErrors"]} == {"eventName", "date"}
    assert [e["eventName"] for e in open_gpx.emulator.snapshot()["events"]] == ["Search"]
    open_gpx.emulator.seed(users=[{"identifyId": "a", "email": "a@acme.com"}, {"identifyId": "b", "email": "b@x.io"}])
    page = call(open_gpx, "GET", "/v1/users", params={"filter": "email!~acme"}).json()
    assert [u["identifyId"] for u in page["users"]] == ["b"]
