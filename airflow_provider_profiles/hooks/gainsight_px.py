"""Gainsight PX (Aptrinsic) REST API: users and accounts, one record per request, and filtered listing.

Connection: password = API key (sent as ``X-APTRINSIC-API-KEY``); extra ``data_center`` (us, eu,
us2) or a host for a custom URL (an emulator); extra ``product_key`` (``AP-...-2``), sent as
``propertyKeys`` with every create and update (the API wants at least one; Gainsight's own loader,
github.com/aptrinsic/px-data-loader, sends it on every PUT and POST).

Ids that cannot travel in a URL path (``/``, ``%``, ``\\``, ``;``, dot segments, and the words the
body-id routes use) go through the body-id routes ``PUT /{users|accounts}/update`` and ``DELETE
/{users|accounts}/delete`` (px-apidocs.gainsight.com); reading one uses an exact-id filter.
"""

from __future__ import annotations

import datetime as dt
import enum
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from airflow_provider_profiles.prepare import values
from airflow_provider_profiles.hooks.base import (
    ProfilesHook,
    RateLimiter,
    VendorConnectionError,
    VendorNotFoundError,
    VendorValidationError,
    shared_limiter,
)

# The documented limit is about 200 requests/s per subscription, counted by the vendor over a window
# of arrivals. The client allows at most RATE_BURST sends per RATE_BURST/195 s: any 200 consecutive
# sends then span at least 1.026 s (RATE_BURST divides 200), which leaves ~25 ms for network jitter,
# while small bursts still let the pool catch up after a slow response. A per-second window of 195
# would not: its bursts at the window edges arrive squeezed and earn 429s.
DEFAULT_REQUESTS_PER_SECOND = 195
RATE_BURST = 5
MAX_PAGE_SIZE = 1000
FILTER_OPERATORS = ("==", "~", "!~", "!=", "<", "<=", ">", ">=")

# entity -> (path, identifier field)
_ENTITIES = {"USER": ("users", "identifyId"), "ACCOUNT": ("accounts", "id")}
_MODEL_TYPES = {"USER": "user", "ACCOUNT": "account"}
# characters a server will not take (encoded) in a path segment, and the segments the body-id routes own
_PATH_UNSAFE_CHARS = frozenset("/%\\;")
_PATH_UNSAFE_IDS = frozenset({".", "..", "update", "delete"})


def fits_in_path(record_id: str) -> bool:
    """Whether an id can address its record in the URL path (else the body-id routes are used)."""
    text = str(record_id)
    return text not in _PATH_UNSAFE_IDS and not _PATH_UNSAFE_CHARS.intersection(text)


class RequestBudgetExhausted(Exception):
    """The hook's ``max_requests`` were all sent: the request was not made."""


def _is_duplicate(error: VendorValidationError) -> bool:
    """A create refused because the record exists: 400 "possible duplicate" (or a 409, to be safe)."""
    return error.status == 409 or (error.status == 400 and "duplicate" in str(error.vendor_message).lower())


class UpsertOrder:
    """Whether an upsert tries the create first, learned from the last few upserts (thread-safe).

    Update first costs one request for a record that exists and two for a new one; create first the
    reverse. Each upsert records whether its record was missing; once most of the recent ones were,
    creates go first, and they turn back when creates start meeting records that exist.
    """

    def __init__(self, window: int = 8):
        self._missing: deque[bool] = deque(maxlen=window)  # empty slots count as "existed": update first
        self._lock = threading.Lock()

    def create_first(self) -> bool:
        with self._lock:
            return 2 * sum(self._missing) > self._missing.maxlen

    def record(self, missing: bool) -> None:
        with self._lock:
            self._missing.append(missing)


class Outcome(str, enum.Enum):
    """What an upsert did to the vendor's record."""

    UPDATED = "updated"
    INSERTED = "inserted"
    MISSING = "missing"  # not there, and inserting was not allowed


def _entity(entity: str) -> tuple[str, str]:
    try:
        return _ENTITIES[str(entity).upper()]
    except KeyError:
        raise ValueError(f"entity must be USER or ACCOUNT, not {entity!r}") from None


# --- filters -------------------------------------------------------------------------------------
def _filter_text(value: Any) -> str:
    if isinstance(value, dt.datetime):  # dates are compared as epoch milliseconds, as the loader sends them
        return str(values.epoch_millis(value))
    return values.to_text(value)


def escape_filter_value(value: Any) -> str:
    """A filter expression with the documented escapes: backslash first, then comma (no double escaping)."""
    text = _filter_text(value)
    if ";" in text:
        raise ValueError(
            f"filter value {text!r} contains ';', which the Gainsight PX filter syntax uses for AND and cannot escape"
        )
    return text.replace("\\", "\\\\").replace(",", "\\,")


def filter_condition(name: str, operator: str, value: Any) -> str:
    """One ``name operator expression`` condition, e.g. ``filter_condition("countryCode", "==", "US")``."""
    if operator not in FILTER_OPERATORS:
        raise ValueError(f"unknown filter operator {operator!r}; use one of {' '.join(FILTER_OPERATORS)}")
    if not name or any(char in name for char in "=~!<>;,\\ "):
        raise ValueError(f"invalid filter field name {name!r}")
    return f"{name}{operator}{escape_filter_value(value)}"


def _is_condition(item: Any) -> bool:
    return (
        isinstance(item, (list, tuple))
        and len(item) == 3
        and isinstance(item[0], str)
        and isinstance(item[1], str)
        and item[1] in FILTER_OPERATORS
    )


def _and_group(group: Any) -> str:
    if isinstance(group, Mapping):
        conditions = [filter_condition(name, "==", value) for name, value in group.items()]
    elif _is_condition(group):
        conditions = [filter_condition(*group)]
    elif isinstance(group, (list, tuple)) and all(_is_condition(item) for item in group):
        conditions = [filter_condition(*item) for item in group]
    else:
        raise ValueError(
            f"cannot read filter group {group!r}: use a dict {{field: value}} (all ==), a (field, operator, value) "
            "condition, or a list of conditions"
        )
    if not conditions:
        raise ValueError("empty filter group")
    return ";".join(conditions)


def build_filters(spec: Any) -> list[str]:
    """Filter parameters from a structured spec; the list is OR-ed (one ``filter=`` each), a group AND-ed.

    - ``None`` or ``[]``: no filter;
    - ``{"countryCode": "US", "city": "Cleveland"}``: one AND group of exact matches;
    - ``("score", ">=", 10)`` or ``[("score", ">=", 10), ("email", "~", "*@acme.com")]``: one AND group;
    - ``[{"countryCode": "US"}, {"countryCode": "UK"}]`` or a list of condition lists: OR of groups.

    Values are escaped here; URL encoding is left to the HTTP client, so it happens exactly once.
    """
    if spec is None or (isinstance(spec, (list, tuple)) and not spec):
        return []
    if isinstance(spec, str):
        raise ValueError("pass filters as a structure (dict, condition tuple or list), not a pre-built string")
    if isinstance(spec, Mapping) or _is_condition(spec):
        return [_and_group(spec)]
    if isinstance(spec, (list, tuple)) and all(_is_condition(item) for item in spec):
        return [_and_group(spec)]
    if isinstance(spec, (list, tuple)):
        return [_and_group(group) for group in spec]
    raise ValueError(f"cannot read filters {spec!r}")


# --- the hook --------------------------------------------------------------------------------------
class GainsightPXHook(ProfilesHook):
    """Users and accounts of one Gainsight PX subscription.

    :param conn_id: connection of type ``gainsight_px``.
    :param requests_per_second: client-side limit shared by every hook of this connection in the
        process (default: the connection's ``rate_limits`` extra, else 195/s).
    :param pool_size: HTTP connections kept open; set it to the number of threads calling the hook.
    """

    conn_name_attr = "conn_id"
    default_conn_name = "gainsight_px_default"
    conn_type = "gainsight_px"
    hook_name = "Gainsight PX"
    default_base_urls = {
        "us": "https://api.aptrinsic.com/v1",
        "eu": "https://api-eu.aptrinsic.com/v1",
        "us2": "https://api-us2.aptrinsic.com/v1",
    }
    region_extra = "data_center"
    default_region = "us"
    rate_limits = {"default": (RATE_BURST, RATE_BURST / DEFAULT_REQUESTS_PER_SECOND)}

    def __init__(self, conn_id: str | None = None, *, requests_per_second: float | None = None,
                 max_requests: int | None = None, **kwargs: Any):
        super().__init__(conn_id, **kwargs)
        if requests_per_second is not None and requests_per_second <= 0:
            raise ValueError(f"requests_per_second must be positive, got {requests_per_second}")
        if max_requests is not None and max_requests < 1:
            raise ValueError(f"max_requests must be at least 1, got {max_requests}")
        self.requests_per_second = requests_per_second
        self.max_requests = max_requests
        self.requests_sent = 0  # every attempt, retries included: what the vendor's daily quota counts
        self._count_lock = threading.Lock()
        self._models: dict[str, dict[str, str]] = {}
        self.upsert_orders = {entity: UpsertOrder() for entity in _ENTITIES}  # per hook, so per load

    def limiter(self, route: str) -> RateLimiter | None:
        if self.requests_per_second is None:
            limiter = super().limiter(route)
        else:
            burst = RATE_BURST if self.requests_per_second >= RATE_BURST else 1
            limiter = shared_limiter(self.conn_type, self.conn_id, route, burst, burst / self.requests_per_second)
        return _CountingLimiter(self, limiter)

    def _count_request(self) -> None:
        """Called before every send (retries included); refuses the send once the budget is spent."""
        with self._count_lock:
            if self.max_requests is not None and self.requests_sent >= self.max_requests:
                raise RequestBudgetExhausted(f"max_requests reached: {self.max_requests} requests sent")
            self.requests_sent += 1

    def auth_headers(self) -> dict[str, str]:
        key = self.connection.password
        if not key:
            raise ValueError(f"connection {self.conn_id!r} has no API key: put it in the password field")
        return {"X-APTRINSIC-API-KEY": key}

    def error_message(self, payload: Any, text: str) -> str:
        error = payload.get("externalapierror") if isinstance(payload, dict) else None
        if not isinstance(error, dict):
            return super().error_message(payload, text)
        message = str(error.get("message") or error.get("status") or "error")
        details = [
            f"{sub.get('field')}: {sub.get('message')}" if isinstance(sub, dict) and sub.get("field") else str(sub)
            for sub in error.get("subErrors") or []
        ]
        return f"{message} ({'; '.join(details)})" if details else message

    def probe(self) -> str:
        # GET /users?pageSize=1, "Get list of all users (/users)" with pageSize (Gainsight PX help
        # center, "Working with the Aptrinsic REST API"; px-apidocs.gainsight.com): one short page
        body = self.probe_json("GET", "users", params={"pageSize": 1})
        if not isinstance(body, dict) or not isinstance(body.get("users"), list):
            raise self.unexpected_answer("GET", "users", "not a page of users")
        total = body.get("totalHits")
        return f"the API key reads users ({total} in total)" if isinstance(total, int) else "the API key reads users"

    @property
    def product_key(self) -> str | None:
        return self.connection.extra_dejson.get("product_key") or None

    # --- single records ---------------------------------------------------------------------------
    @staticmethod
    def _record_path(entity: str, record_id: str) -> str:
        path, _ = _entity(entity)
        if record_id is None or str(record_id) == "":
            raise ValueError(f"an empty {entity} id cannot be looked up")
        return f"{path}/{quote(str(record_id), safe='')}"

    def _with_product_key(self, entity: str, record: Mapping[str, Any]) -> dict:
        """The body with ``propertyKeys``: the API refuses a create or update without one."""
        body = dict(record)
        if not body.get("propertyKeys"):
            if not self.product_key:
                raise ValueError(
                    f"writing a Gainsight PX {entity} needs the product key: set the extra 'product_key' "
                    f"(AP-XXXXXXXXXXXX-2) on connection {self.conn_id!r}"
                )
            body["propertyKeys"] = [self.product_key]
        return body

    def get(self, entity: str, record_id: str) -> dict | None:
        """The record with this id (ids are case-sensitive), or None if there is none."""
        if not fits_in_path(str(record_id)):
            # no body-id read route: a filter (case-insensitive; ';' cannot be escaped there, so it is
            # matched by the '?' wildcard), then the exact id among what it finds
            _, id_field = _entity(entity)
            text = str(record_id)
            condition = (id_field, "~", text.replace(";", "?")) if ";" in text else (id_field, "==", text)
            found = self.iter_records(entity, condition)
            return next((record for record in found if str(record.get(id_field)) == str(record_id)), None)
        try:
            return self.request("GET", self._record_path(entity, record_id)).json()
        except VendorNotFoundError:
            return None

    def create(self, entity: str, record: Mapping[str, Any]) -> dict:
        """POST a new record (201); the product key goes in ``propertyKeys`` unless the record has them."""
        path, id_field = _entity(entity)
        if not record.get(id_field):
            raise ValueError(f"a new {entity} needs {id_field!r}")
        body = self._with_product_key(entity, record)
        return _json_or(self.request("POST", path, json=body), body)

    def update(self, entity: str, record_id: str, record: Mapping[str, Any]) -> None:
        """PUT changes to an existing record (204 or 200); ``VendorNotFoundError`` if it does not exist."""
        path, id_field = _entity(entity)
        body = self._with_product_key(entity, record)
        if fits_in_path(str(record_id)):
            self.request("PUT", self._record_path(entity, record_id), json=body)
        else:
            self.request("PUT", f"{path}/update", json={**body, id_field: str(record_id)})

    def delete(self, entity: str, record_id: str, hard_delete: bool = False) -> bool:
        """Delete a record; False if it did not exist. ``hard_delete``: not revived if written again
        within 7 days (the API's default revives a soft-deleted record)."""
        path, id_field = _entity(entity)
        params = {"hardDelete": "true" if hard_delete else "false"}
        if fits_in_path(str(record_id)):
            return self.delete_if_exists(self._record_path(entity, record_id), params=params)
        return self.delete_if_exists(f"{path}/delete", params=params, json={id_field: str(record_id)})

    def upsert(self, entity: str, record: Mapping[str, Any], insert_missing: bool = True) -> Outcome:
        """Update the record, or create it when ``insert_missing``: the data loader's update/insert logic.

        PUT, then POST on 404; after mostly new records (``UpsertOrder``), POST first, then PUT when
        the POST meets the record (400 "possible duplicate"). A create that lost its response is
        checked before being sent again, and a create that meets a record created meanwhile becomes
        an update, so nothing is written twice.
        """
        _, id_field = _entity(entity)
        record_id = str(record[id_field])
        record = self._with_product_key(entity, record)  # a configuration error before anything is sent
        order = self.upsert_orders[str(entity).upper()]
        if insert_missing and order.create_first():
            return self._create_then_update(entity, record_id, record, order)
        return self._update_then_create(entity, record_id, record, insert_missing, order)

    def _update_then_create(self, entity: str, record_id: str, record: dict, insert_missing: bool,
                            order: UpsertOrder) -> Outcome:
        try:
            self.update(entity, record_id, record)
            order.record(missing=False)
            return Outcome.UPDATED
        except VendorNotFoundError:
            order.record(missing=True)
            if not insert_missing:
                return Outcome.MISSING
        try:
            self.create(entity, record)
        except VendorConnectionError:
            # the response was lost, not necessarily the create: look before sending it again
            if self.get(entity, record_id) is None:
                try:
                    self.create(entity, record)
                except VendorValidationError as error:
                    if not _is_duplicate(error):  # the first create landed after all, with this same body
                        raise
        except VendorValidationError as error:
            if not _is_duplicate(error):
                raise
            self.update(entity, record_id, record)  # created by someone else meanwhile
            return Outcome.UPDATED
        return Outcome.INSERTED

    def _create_then_update(self, entity: str, record_id: str, record: dict, order: UpsertOrder) -> Outcome:
        try:
            self.create(entity, record)
        except VendorConnectionError:
            # the response was lost: the create may have landed, or the record may have been there
            # before; the PUT-first path settles it without a second create (a PUT that finds the record
            # counts it as updated, as it cannot tell which)
            return self._update_then_create(entity, record_id, record, True, order)
        except VendorValidationError as error:
            if not _is_duplicate(error):
                # refused for another reason (an update may leave out what a create requires): do what
                # PUT first would have done, the update, and keep the create's reason if there is none
                try:
                    self.update(entity, record_id, record)
                except VendorNotFoundError:
                    order.record(missing=True)
                    raise error from None
                order.record(missing=False)
                return Outcome.UPDATED
            # it exists (ours or someone else's, created meanwhile): the create becomes an update
            order.record(missing=False)
            self.update(entity, record_id, record)
            return Outcome.UPDATED
        order.record(missing=True)
        return Outcome.INSERTED

    # --- the attribute model ------------------------------------------------------------------------
    def attribute_types(self, entity: str) -> dict[str, str]:
        """``{apiName: STRING|DATE_TIME|BOOLEAN|NUMBER}`` of the subscription's user or account model
        (``GET /admin/model/{user|account}/attributes``), read once per hook."""
        kind = _MODEL_TYPES.get(str(entity).upper())
        if kind is None:
            raise ValueError(f"entity must be USER or ACCOUNT, not {entity!r}")
        if kind not in self._models:
            attributes = self.request("GET", f"admin/model/{kind}/attributes").json()
            self._models[kind] = {
                str(a["apiName"]): str(a.get("type") or "STRING").upper()
                for a in attributes
                if isinstance(a, dict) and a.get("apiName") and a.get("state", "ENABLED") != "DELETED"
            }
        return self._models[kind]

    # --- custom events ------------------------------------------------------------------------------
    def create_custom_event(self, event: Mapping[str, Any]) -> dict:
        """POST one custom event (``/events/custom``: identifyId, eventName, date in epoch ms,
        attributes...); the product key goes in ``propertyKey`` unless the event has one."""
        for name in ("identifyId", "eventName"):
            if not event.get(name):
                raise ValueError(f"a custom event needs {name!r}")
        body = dict(event)
        if not body.get("propertyKey"):
            if not self.product_key:
                raise ValueError(f"a custom event needs the product key: set the extra 'product_key' on "
                                 f"connection {self.conn_id!r}")
            body["propertyKey"] = self.product_key
        return _json_or(self.request("POST", "events/custom", json=body), body)

    def get_user(self, identify_id: str) -> dict | None:
        return self.get("USER", identify_id)

    def create_user(self, user: Mapping[str, Any]) -> dict:
        return self.create("USER", user)

    def update_user(self, identify_id: str, changes: Mapping[str, Any]) -> None:
        self.update("USER", identify_id, changes)

    def upsert_user(self, user: Mapping[str, Any], insert_missing: bool = True) -> Outcome:
        return self.upsert("USER", user, insert_missing)

    def delete_user(self, identify_id: str, hard_delete: bool = False) -> bool:
        """True if deleted, False if there was no such user; ``VendorAPIError`` subclasses otherwise."""
        return self.delete("USER", identify_id, hard_delete)

    def get_account(self, account_id: str) -> dict | None:
        return self.get("ACCOUNT", account_id)

    def create_account(self, account: Mapping[str, Any]) -> dict:
        return self.create("ACCOUNT", account)

    def update_account(self, account_id: str, changes: Mapping[str, Any]) -> None:
        self.update("ACCOUNT", account_id, changes)

    def upsert_account(self, account: Mapping[str, Any], insert_missing: bool = True) -> Outcome:
        return self.upsert("ACCOUNT", account, insert_missing)

    def delete_account(self, account_id: str, hard_delete: bool = False) -> bool:
        """True if deleted, False if there was no such account; ``VendorAPIError`` subclasses otherwise."""
        return self.delete("ACCOUNT", account_id, hard_delete)

    # --- listing ----------------------------------------------------------------------------------
    def iter_records(
        self,
        entity: str,
        filters: Any = None,
        sort: str | Sequence[str] | None = None,
        page_size: int = MAX_PAGE_SIZE,
        limit: int | None = None,
    ) -> Iterator[dict]:
        """Every record matching ``filters`` (see ``build_filters``), page by page with ``scrollId``.

        Stops on a short page: the API keeps returning a scrollId after the last page.
        """
        path, _ = _entity(entity)
        if not 1 <= int(page_size) <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
        page_size = int(page_size)
        params: dict[str, Any] = {"pageSize": page_size}
        filter_params = build_filters(filters)
        if filter_params:
            params["filter"] = filter_params
        if sort:
            params["sort"] = [sort] if isinstance(sort, str) else list(sort)
        returned = 0
        while True:
            page = self.request("GET", path, params=params).json()
            records = page.get(path) or []
            for record in records:
                if limit is not None and returned >= limit:
                    return
                yield record
                returned += 1
            scroll_id = page.get("scrollId")
            if limit is not None and returned >= limit:
                return
            if len(records) < page_size or not scroll_id:
                return
            # the scroll carries the query; repeating it does no harm and suits servers that want it
            params = {**params, "scrollId": scroll_id}

    def iter_users(self, filters: Any = None, **kwargs: Any) -> Iterator[dict]:
        return self.iter_records("USER", filters, **kwargs)

    def iter_accounts(self, filters: Any = None, **kwargs: Any) -> Iterator[dict]:
        return self.iter_records("ACCOUNT", filters, **kwargs)


def _json_or(response: Any, sent: dict) -> dict:
    """The created record as answered, or as sent when the 201 has no (JSON) body."""
    try:
        return response.json()
    except ValueError:
        return sent


class _CountingLimiter:
    """The route's rate limiter, counting each send against the hook's request budget first."""

    def __init__(self, hook: GainsightPXHook, limiter: RateLimiter | None):
        self.hook, self.limiter = hook, limiter

    def acquire(self) -> float:
        self.hook._count_request()
        return self.limiter.acquire() if self.limiter else 0.0

    async def aacquire(self) -> float:
        self.hook._count_request()
        return await self.limiter.aacquire() if self.limiter else 0.0
