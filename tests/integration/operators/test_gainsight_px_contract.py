"""GainsightPXHook against the corrected vendor contract: propertyKeys on every write, 400 duplicates,
the attribute model, body-id routes, hardDelete, ``!~``, custom events and a per-run request budget."""

from __future__ import annotations

import pytest

from airflow_provider_profiles.hooks.base import RetryPolicy
from airflow_provider_profiles.hooks.gainsight_px import GainsightPXHook, Outcome, RequestBudgetExhausted

FAST = RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.05, jitter=0.0)
KEY = "AP-EMULATOR-2"


@pytest.fixture
def gpx(emulator, airflow_connection):
    server = emulator("gainsight_px", rate_limit=None)
    airflow_connection("gainsight_px_default", "gainsight_px", host=server.url, password=server.emulator.api_key,
                       extra={"product_key": server.emulator.product_key})
    return server


@pytest.fixture
def hook(gpx):
    return GainsightPXHook(retry_policy=FAST)


def writes_sent(gpx):
    return sum(n for key, n in gpx.emulator.counters.items() if not key.startswith("GET"))


def test_updates_carry_the_product_key(hook, gpx):
    gpx.emulator.seed(users=[{"identifyId": "u"}], accounts=[{"id": "a", "name": "A"}])
    hook.update_user("u", {"identifyId": "u", "title": "t"})
    hook.update_account("a", {"id": "a", "plan": "gold"})
    assert hook.upsert_account({"id": "b", "name": "B"}) is Outcome.INSERTED
    snapshot = gpx.emulator.snapshot()
    assert snapshot["users"]["u"]["propertyKeys"] == [KEY] and snapshot["accounts"]["a"]["plan"] == "gold"
    assert snapshot["accounts"]["b"]["propertyKeys"] == [KEY]


def test_a_write_without_product_key_is_refused_before_sending(gpx, airflow_connection):
    airflow_connection("gpx_nokey", "gainsight_px", host=gpx.url, password=gpx.emulator.api_key)
    hook = GainsightPXHook("gpx_nokey", retry_policy=FAST)
    for write in (lambda: hook.update_user("u", {"title": "t"}), lambda: hook.create_account({"id": "a", "name": "A"})):
        with pytest.raises(ValueError, match="product_key"):
            write()
    assert writes_sent(gpx) == 0
    hook.create_account({"id": "a", "name": "A", "propertyKeys": [KEY]})  # explicit keys are enough
    assert writes_sent(gpx) == 1


def test_duplicate_create_answered_400_becomes_an_update(hook, gpx):
    # the record appears between the PUT's 404 and the POST; the API answers 400 "possible duplicate"
    gpx.emulator.inject("status", match=r"^PUT /v1/users/race$", count=1, status=404,
                        body={"externalapierror": {"status": "NOT_FOUND", "message": "gone"}})
    gpx.emulator.seed(users=[{"identifyId": "race", "title": "old"}])
    assert hook.upsert_user({"identifyId": "race", "title": "new"}) is Outcome.UPDATED
    assert gpx.emulator.snapshot()["users"]["race"]["title"] == "new"


def test_attribute_model_is_read_once(hook, gpx):
    types = hook.attribute_types("USER")
    assert types["acceptDate"] == "DATE_TIME" and types["signUpDate"] == "DATE_TIME" and types["score"] == "NUMBER"
    assert hook.attribute_types("user") is types
    assert hook.attribute_types("ACCOUNT")["numberOfEmployees"] == "NUMBER"
    assert gpx.emulator.counters["GET /v1/admin/model/user/attributes"] == 1


@pytest.mark.parametrize("odd_id", ["a/b", "50%", "x;y", "back\\slash", ".", "..", "update", "delete"])
def test_ids_that_cannot_go_in_a_path_use_the_body_routes(hook, gpx, odd_id):
    assert hook.upsert_user({"identifyId": odd_id, "title": "one"}) is Outcome.INSERTED
    assert hook.upsert_user({"identifyId": odd_id, "title": "two"}) is Outcome.UPDATED
    assert gpx.emulator.snapshot()["users"][odd_id]["title"] == "two"
    assert hook.get_user(odd_id)["identifyId"] == odd_id
    assert hook.upsert_account({"id": odd_id, "name": "N"}) is Outcome.INSERTED
    assert hook.delete_account(odd_id) is True
    assert hook.delete_user(odd_id, hard_delete=True) is True
    assert hook.delete_user(odd_id) is False
    assert gpx.emulator.snapshot()["deletions"] == [("accounts", odd_id, False), ("users", odd_id, True)]


def test_delete_takes_hard_delete(hook, gpx):
    gpx.emulator.seed(users=[{"identifyId": "u1"}, {"identifyId": "u2"}], accounts=[{"id": "a", "name": "A"}])
    assert hook.delete_user("u1", hard_delete=True) is True
    assert hook.delete_user("u2") is True
    assert hook.delete_account("a", hard_delete=True) is True
    assert hook.delete_account("a") is False
    assert gpx.emulator.snapshot()["deletions"] == [("users", "u1", True), ("users", "u2", False), ("accounts", "a", True)]


def test_not_like_filter(hook, gpx):
    gpx.emulator.seed(users=[{"identifyId": "a", "email": "a@acme.com"}, {"identifyId": "b", "email": "b@x.io"}])
    assert [u["identifyId"] for u in hook.iter_users(("email", "!~", "*@acme.com"))] == ["b"]


def test_custom_event(hook, gpx):
    hook.create_custom_event({"identifyId": "u", "eventName": "Search", "date": 1560499354771,
                              "attributes": {"Source": "CSV"}})
    (event,) = gpx.emulator.snapshot()["events"]
    assert event["propertyKey"] == KEY and event["attributes"] == {"Source": "CSV"}
    with pytest.raises(ValueError, match="eventName"):
        hook.create_custom_event({"identifyId": "u"})


def test_request_budget(gpx):
    hook = GainsightPXHook(retry_policy=FAST, max_requests=3)
    gpx.emulator.seed(users=[{"identifyId": "u"}])
    hook.get_user("u")
    assert hook.upsert_user({"identifyId": "n"}) is Outcome.INSERTED  # PUT 404 + POST
    with pytest.raises(RequestBudgetExhausted, match="3 requests"):
        hook.get_user("u")
    assert hook.requests_sent == 3 and sum(gpx.emulator.counters.values()) == 3
