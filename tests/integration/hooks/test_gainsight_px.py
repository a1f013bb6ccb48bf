"""GainsightPXHook against the Gainsight PX emulator over real HTTP: records, listing, filters, errors."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from airflow_provider_profiles.hooks.base import (
    RetryPolicy,
    VendorAuthError,
    VendorNotFoundError,
    VendorRateLimitError,
    VendorValidationError,
)
from airflow_provider_profiles.hooks.gainsight_px import GainsightPXHook, Outcome

FAST = RetryPolicy(max_attempts=5, backoff_initial=0.01, backoff_max=0.05, jitter=0.0)


@pytest.fixture
def gpx(emulator, airflow_connection):
    server = emulator("gainsight_px", rate_limit=None)
    airflow_connection("gainsight_px_default", "gainsight_px", host=server.url, password=server.emulator.api_key,
                       extra={"product_key": server.emulator.product_key})
    return server


@pytest.fixture
def hook(gpx):
    return GainsightPXHook(retry_policy=FAST)


def test_base_url_from_data_center_or_host(airflow_connection):
    airflow_connection("gpx_eu", "gainsight_px", password="k", extra={"data_center": "eu"})
    airflow_connection("gpx_us2", "gainsight_px", password="k", extra={"data_center": "us2"})
    airflow_connection("gpx_custom", "gainsight_px", password="k", host="http://127.0.0.1:9999")
    airflow_connection("gpx_bad", "gainsight_px", password="k", extra={"data_center": "mars"})
    hooks = {name: GainsightPXHook(name) for name in ("gpx_eu", "gpx_us2", "gpx_custom")}
    for hook in hooks.values():
        hook.connection  # noqa: B018
    assert hooks["gpx_eu"].base_url == "https://api-eu.aptrinsic.com/v1"
    assert hooks["gpx_us2"].base_url == "https://api-us2.aptrinsic.com/v1"
    assert hooks["gpx_custom"].base_url == "http://127.0.0.1:9999/v1"
    with pytest.raises(ValueError, match="data_center 'mars'"):
        GainsightPXHook("gpx_bad").connection  # noqa: B018


def test_user_lifecycle(hook, gpx):
    assert hook.get_user("u-1") is None
    created = hook.create_user({"identifyId": "u-1", "email": "a@example.com", "signUpDate": 1546300800000})
    assert created["identifyId"] == "u-1"
    stored = gpx.emulator.snapshot()["users"]["u-1"]
    assert stored["propertyKeys"] == [gpx.emulator.product_key]  # product key sent on create
    hook.update_user("u-1", {"identifyId": "u-1", "location": {"city": "Cleveland"}})
    assert hook.get_user("u-1")["location"] == {"city": "Cleveland"}
    assert hook.get_user("U-1") is None  # ids are case-sensitive
    with pytest.raises(VendorNotFoundError, match="No user found"):
        hook.update_user("nobody", {"email": "x@example.com"})
    assert hook.delete_user("u-1") is True
    assert hook.delete_user("u-1") is False
    assert gpx.emulator.snapshot()["users"] == {}


def test_ids_with_reserved_characters(hook, gpx):
    hook.create_user({"identifyId": "a/b c?d#e%"})
    assert hook.get_user("a/b c?d#e%")["identifyId"] == "a/b c?d#e%"


def test_account_create_requires_name(hook, gpx):
    with pytest.raises(VendorValidationError, match="name is required") as caught:
        hook.create_account({"id": "acme"})
    assert caught.value.status == 400
    hook.create_account({"id": "acme", "name": "Acme"})
    hook.update_account("acme", {"id": "acme", "numberOfEmployees": 5})
    assert hook.get_account("acme")["numberOfEmployees"] == 5


def test_upsert_update_only_and_insert_missing(hook, gpx):
    assert hook.upsert_user({"identifyId": "new"}, insert_missing=False) is Outcome.MISSING
    assert "new" not in gpx.emulator.snapshot()["users"]
    assert hook.upsert_user({"identifyId": "new", "title": "A"}, insert_missing=True) is Outcome.INSERTED
    assert hook.upsert_user({"identifyId": "new", "title": "B"}, insert_missing=True) is Outcome.UPDATED
    assert gpx.emulator.snapshot()["users"]["new"]["title"] == "B"
    assert hook.upsert_account({"id": "acc", "name": "Acc"}) is Outcome.INSERTED
    counters = gpx.emulator.counters
    assert counters["PUT /v1/users/new"] == 3 and counters["POST /v1/users"] == 1


def test_upsert_create_that_meets_a_new_record_becomes_an_update(hook, gpx):
    # the record appears between the PUT's 404 and the POST: the 400 "possible duplicate" turns into an update
    gpx.emulator.inject("status", match=r"^PUT /v1/users/race$", count=1, status=404,
                        body={"externalapierror": {"status": "NOT_FOUND", "message": "gone"}})
    gpx.emulator.seed(users=[{"identifyId": "race", "title": "old"}])
    assert hook.upsert_user({"identifyId": "race", "title": "new"}) is Outcome.UPDATED
    assert gpx.emulator.snapshot()["users"]["race"]["title"] == "new"


@pytest.mark.parametrize("fault", [
    {"kind": "delay", "delay": 0.6},  # processed after the client gave up on the response
    {"kind": "drop"},  # connection cut before the emulator processed it
])
def test_lost_create_response_is_checked_not_duplicated(hook, gpx, fault):
    gpx.emulator.inject(match=r"^POST /v1/users$", count=1, **fault)
    short = GainsightPXHook(retry_policy=FAST)
    short.connection  # noqa: B018
    short.timeout = (2.0, 0.3)
    assert short.upsert_user({"identifyId": "slow", "title": "t"}) is Outcome.INSERTED
    assert gpx.emulator.writes[("users", "slow")] == 1
    assert gpx.emulator.counters["POST /v1/users"] == 2  # sent again only after a GET found nothing


def test_auth_errors(gpx, airflow_connection):
    airflow_connection("gpx_wrong", "gainsight_px", host=gpx.url, password="wrong")
    with pytest.raises(VendorAuthError) as caught:
        GainsightPXHook("gpx_wrong").get_user("u")
    assert caught.value.status == 403 and "wrong" not in str(caught.value)
    airflow_connection("gpx_nokey", "gainsight_px", host=gpx.url)
    with pytest.raises(ValueError, match="no API key"):
        GainsightPXHook("gpx_nokey").get_user("u")


def test_error_body_is_read(hook, gpx):
    with pytest.raises(VendorValidationError) as caught:
        hook.create_user({"identifyId": "d", "signUpDate": "2019-01-01"})
    assert "signUpDate: must be milliseconds since the epoch" in str(caught.value)


def test_rate_limit_answers_429_and_the_hook_waits(emulator, airflow_connection):
    server = emulator("gainsight_px", rate_limit=5)
    airflow_connection("gpx_limited", "gainsight_px", host=server.url, password=server.emulator.api_key)
    hook = GainsightPXHook("gpx_limited", requests_per_second=1000, retry_policy=FAST)
    for _ in range(8):
        assert hook.get_user("x") is None
    assert server.emulator.throttled >= 1  # 429s were answered and retried after Retry-After


def test_429_that_never_clears_is_a_rate_limit_error(hook, gpx):
    gpx.emulator.inject("status", match="GET /v1/users/", count=10, status=429, retry_after=0.01)
    with pytest.raises(VendorRateLimitError):
        hook.get_user("x")
    assert gpx.emulator.counters["GET /v1/users/x"] == FAST.max_attempts


# --- listing ------------------------------------------------------------------------------------
def _seed(gpx, n=12):
    gpx.emulator.seed(users=[
        {"identifyId": f"u{i:02d}", "score": i, "email": f"user{i}@{'acme' if i % 2 else 'other'}.com",
         "location": {"countryCode": "US" if i < 6 else "UK", "city": "Cleveland" if i % 3 == 0 else "Leeds"},
         "customAttributes": {"plan": "pro" if i % 4 == 0 else "free"}}
        for i in range(n)
    ])


def test_scroll_pages_stop_on_short_page(hook, gpx):
    _seed(gpx, 12)
    assert [u["identifyId"] for u in hook.iter_users(page_size=5)] == [f"u{i:02d}" for i in range(12)]
    queries = [parse_qs(q) for q in gpx.emulator.list_queries]
    assert len(queries) == 3  # 5 + 5 + 2: the scrollId still came back with the last page
    assert "scrollId" not in queries[0] and queries[1]["scrollId"] == queries[2]["scrollId"]


def test_exact_multiple_stops_on_the_empty_page(hook, gpx):
    _seed(gpx, 10)
    assert len(list(hook.iter_users(page_size=5))) == 10
    assert len(gpx.emulator.list_queries) == 3


def test_limit_and_page_size_bounds(hook, gpx):
    _seed(gpx, 12)
    assert len(list(hook.iter_users(page_size=5, limit=7))) == 7
    assert len(gpx.emulator.list_queries) == 2
    with pytest.raises(ValueError, match="between 1 and 1000"):
        next(hook.iter_users(page_size=1001))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (("score", "==", 3), [3]),
        (("score", "!=", 3), [i for i in range(12) if i != 3]),
        (("score", "<", 2), [0, 1]),
        (("score", "<=", 2), [0, 1, 2]),
        (("score", ">", 9), [10, 11]),
        (("score", ">=", 10), [10, 11]),
        (("email", "~", "user1*@acme"), [1, 11]),
        (("email", "~", "other"), [0, 2, 4, 6, 8, 10]),
        ({"location.countryCode": "us", "location.city": "Cleveland"}, [0, 3]),  # AND, case-insensitive
        ([{"location.countryCode": "US", "location.city": "Cleveland"},
          {"location.countryCode": "UK", "location.city": "Cleveland"}], [0, 3, 6, 9]),  # OR of ANDs
        ([("customAttributes.plan", "==", "pro"), ("score", ">", 0)], [4, 8]),
    ],
)
def test_filters(hook, gpx, spec, expected):
    _seed(gpx, 12)
    assert sorted(u["score"] for u in hook.iter_users(spec)) == expected


def test_filter_escaping_and_single_url_encoding(hook, gpx):
    gpx.emulator.seed(users=[{"identifyId": "a", "lastName": "Smith, Jr \\ II"}, {"identifyId": "b", "lastName": "Smith"}])
    found = list(hook.iter_users([("lastName", "==", "Smith, Jr \\ II"), ("identifyId", "!=", "b")]))
    assert [u["identifyId"] for u in found] == ["a"]
    raw = gpx.emulator.list_queries[-1]
    assert "%25" not in raw  # nothing encoded twice
    assert parse_qs(raw)["filter"] == ["lastName==Smith\\, Jr \\\\ II;identifyId!=b"]


def test_or_is_repeated_filter_parameters_and_sort(hook, gpx):
    _seed(gpx, 12)
    found = list(hook.iter_users([("score", "<", 2), ("score", ">", 10)], sort="-score"))
    assert found == []  # one group: score < 2 AND score > 10
    queries = parse_qs(gpx.emulator.list_queries[-1])
    assert queries["filter"] == ["score<2;score>10"]
    found = list(hook.iter_users([[("score", "<", 2)], [("score", ">", 10)]], sort="-score"))
    assert [u["score"] for u in found] == [11, 1, 0]
    assert parse_qs(gpx.emulator.list_queries[-1])["filter"] == ["score<2", "score>10"]


def test_accounts_listing(hook, gpx):
    gpx.emulator.seed(accounts=[{"id": f"a{i}", "name": f"Acc {i}", "numberOfEmployees": i * 10} for i in range(4)])
    assert [a["id"] for a in hook.iter_accounts(("numberOfEmployees", ">=", 20))] == ["a2", "a3"]


# --- the upsert's order: PUT first or POST first, learned from the last upserts --------------------
def _sent(gpx):
    return {key: n for key, n in gpx.emulator.counters.items() if not key.startswith("GET /_emulator")}


def test_upserting_new_records_costs_about_one_request_each(hook, gpx):
    outcomes = [hook.upsert_user({"identifyId": f"n{i}", "title": "t"}) for i in range(100)]
    assert outcomes == [Outcome.INSERTED] * 100
    assert all(gpx.emulator.writes[("users", f"n{i}")] == 1 for i in range(100))
    assert gpx.emulator.counters["POST /v1/users"] == 100  # one create each, none refused
    assert sum(_sent(gpx).values()) <= 110  # ~N requests, not 2N (a few PUTs before the order turns)


def test_upserting_existing_records_stays_one_put_each(hook, gpx):
    gpx.emulator.seed(users=[{"identifyId": f"e{i}", "title": "old"} for i in range(100)])
    outcomes = [hook.upsert_user({"identifyId": f"e{i}", "title": "new"}) for i in range(100)]
    assert outcomes == [Outcome.UPDATED] * 100
    assert gpx.emulator.counters["POST /v1/users"] == 0
    assert sum(_sent(gpx).values()) == 100
    assert {user["title"] for user in gpx.emulator.snapshot()["users"].values()} == {"new"}


def test_new_then_existing_records_turn_the_order_back(hook, gpx):
    gpx.emulator.seed(users=[{"identifyId": f"e{i}", "title": "old"} for i in range(100)])
    news = [hook.upsert_user({"identifyId": f"n{i}", "title": "t"}) for i in range(100)]
    olds = [hook.upsert_user({"identifyId": f"e{i}", "title": "new"}) for i in range(100)]
    assert news == [Outcome.INSERTED] * 100 and olds == [Outcome.UPDATED] * 100
    assert sum(_sent(gpx).values()) <= 220  # a few wasted requests at each turn, not one per record


def test_mixed_upserts_end_with_every_record_right(hook, gpx):
    existing = {f"u{i}" for i in range(300) if (i // 25) % 2 == 0}  # runs of 25 existing, then 25 new
    gpx.emulator.seed(users=[{"identifyId": key, "title": "old", "email": "keep@x.com"} for key in existing])
    outcomes = {f"u{i}": hook.upsert_user({"identifyId": f"u{i}", "title": f"t{i}"}) for i in range(300)}
    users = gpx.emulator.snapshot()["users"]
    assert len(users) == 300
    for i in range(300):
        key = f"u{i}"
        assert outcomes[key] is (Outcome.UPDATED if key in existing else Outcome.INSERTED)
        assert users[key]["title"] == f"t{i}"
        assert users[key].get("email") == ("keep@x.com" if key in existing else None)
        assert gpx.emulator.writes[("users", key)] == 1
    assert sum(_sent(gpx).values()) < 300 + 150 - 50  # PUT first would cost 450 here


def _warm_to_create_first(hook):
    for i in range(20):
        assert hook.upsert_user({"identifyId": f"warm{i}"}) is Outcome.INSERTED


def test_create_first_meeting_a_record_created_meanwhile_is_an_update(hook, gpx):
    _warm_to_create_first(hook)
    posts = gpx.emulator.counters["POST /v1/users"]
    gpx.emulator.seed(users=[{"identifyId": "race", "title": "old"}])  # created by someone else
    assert hook.upsert_user({"identifyId": "race", "title": "new"}) is Outcome.UPDATED
    assert gpx.emulator.counters["POST /v1/users"] == posts + 1  # tried the create, met the duplicate
    assert gpx.emulator.snapshot()["users"]["race"]["title"] == "new"
    assert gpx.emulator.writes[("users", "race")] == 1  # the update; no second user


def test_create_first_does_not_touch_update_only(hook, gpx):
    _warm_to_create_first(hook)
    assert hook.upsert_user({"identifyId": "absent"}, insert_missing=False) is Outcome.MISSING
    assert "absent" not in gpx.emulator.snapshot()["users"]


@pytest.mark.parametrize("fault", [{"kind": "delay", "delay": 0.6}, {"kind": "drop"}])
def test_create_first_lost_response_is_not_duplicated(hook, gpx, fault):
    short = GainsightPXHook(retry_policy=FAST)
    short.connection  # noqa: B018
    short.timeout = (2.0, 0.3)
    _warm_to_create_first(short)
    gpx.emulator.inject(match=r"^POST /v1/users$", count=1, **fault)
    assert short.upsert_user({"identifyId": "slow", "title": "t"}) in (Outcome.INSERTED, Outcome.UPDATED)
    users = gpx.emulator.snapshot()["users"]
    assert users["slow"]["title"] == "t" and list(users).count("slow") == 1
    assert gpx.emulator.counters["POST /v1/users"] <= 20 + 2


def test_create_first_keeps_updates_that_a_create_would_refuse(hook, gpx):
    # an account update may leave out the name a create requires: a create refused for another reason
    # than a duplicate is tried as an update, as the PUT-first order would have done
    for i in range(20):
        assert hook.upsert_account({"id": f"warm{i}", "name": f"W{i}"}) is Outcome.INSERTED
    gpx.emulator.seed(accounts=[{"id": "old", "name": "Old"}])
    assert hook.upsert_account({"id": "old", "numberOfEmployees": 5}) is Outcome.UPDATED
    assert gpx.emulator.snapshot()["accounts"]["old"] == {**gpx.emulator.snapshot()["accounts"]["old"],
                                                          "name": "Old", "numberOfEmployees": 5}
    with pytest.raises(VendorValidationError, match="name is required"):  # new and unnamed: the create's reason
        hook.upsert_account({"id": "unnamed", "numberOfEmployees": 5})
    assert "unnamed" not in gpx.emulator.snapshot()["accounts"]
