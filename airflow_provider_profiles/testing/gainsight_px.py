"""Gainsight PX (Aptrinsic) REST API emulator: users, accounts, their attribute model, custom events.

Serves the vendor paths under ``/v1`` (sources are cited beside each rule below):

- ``GET /v1/users`` (list: ``pageSize`` <= 1000, ``scrollId``, repeated ``filter``, ``sort``),
  ``POST /v1/users`` (201; ``identifyId`` and ``propertyKeys`` required; a duplicate answers 400
  "possible duplicate"), ``GET|PUT|DELETE /v1/users/{identifyId}`` (PUT answers 204, 404 when
  missing; PUT needs ``propertyKeys`` too; DELETE takes ``?hardDelete=``), and the body-id variants
  ``PUT /v1/users/update`` and ``DELETE /v1/users/delete`` for ids that cannot go in a path (ids with
  an encoded ``/``, ``%``, ``\\`` or ``;``, or dot segments, are refused in the path with 400).
  ``/v1/accounts`` likewise (``id`` and ``name`` required on create).
- ``GET /v1/admin/model/{user|account}/attributes``: the subscription's attribute model, the standard
  attributes plus ``custom_attributes`` (configurable); writes are type-checked against it.
- ``POST /v1/events/custom``: one custom event (201).
- Header ``X-APTRINSIC-API-KEY``: missing -> 401, wrong -> 403.
- Errors use the vendor body ``{"externalapierror": {"status", "message", "debugMessage", "subErrors"}}``.
- ``rate_limit`` requests per second (sliding window) -> 429 with Retry-After; ``latency`` per request.
- Scroll pagination as the API behaves: a ``scrollId`` comes back on every page, the last one
  included, so a client must stop on a short page.

Test helpers: ``seed(users=[...], accounts=[...])`` (also ``POST /_emulator/seed``), ``writes``
(successful creates/updates per record, to prove nothing was lost or written twice), ``throttled``
(429s answered), ``list_queries`` (raw query strings of list calls), ``deletions`` ((entity, id,
hard) per delete) and ``events`` (custom events received).
"""

from __future__ import annotations

import collections
import fnmatch
import itertools
import re
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airflow_provider_profiles.testing.base import (
    CONTROL_PREFIX,
    Emulator,
    SlidingWindowLimit,
)

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 25
MAX_OPEN_SCROLLS = 1000

# entity path -> (identifier field, list key, fields required on create)
ENTITIES = {
    # propertyKeys on every create and update: the reference's user bodies carry it
    # (https://px-apidocs.gainsight.com/operation/operation-updateuserusingput) and Gainsight's own loader
    # sends it on every PUT and POST (https://github.com/aptrinsic/px-data-loader, loadData)
    "users": ("identifyId", "users", ("identifyId", "propertyKeys")),
    "accounts": ("id", "accounts", ("id", "name", "propertyKeys")),  # id and name: DESIGN.md (V), the reference
}
MODEL_TYPES = {"users": "user", "accounts": "account"}
OBJECT_FIELDS = frozenset({"location", "customAttributes"})
# the record's own fields, kept by the API rather than the account's model: always dates
SYSTEM_DATE_FIELDS = frozenset({"createDate", "lastModifiedDate", "lastSeenDate"})
ATTRIBUTE_TYPES = ("STRING", "DATE_TIME", "BOOLEAN", "NUMBER")

# The standard attributes, by apiName, from the help center's "User and Account Model"
# (https://support.gainsight.com/PX/API_for_Developers/01About/User_and_Account_Model); "title" is the
# name the official loader's example maps (https://github.com/aptrinsic/px-data-loader, README).
_LOCATION = {name: "STRING" for name in (
    "city", "continent", "countryCode", "countryName", "postalCode", "regionName", "stateCode", "stateName",
    "street", "timeZone", "latitude", "longitude")}
STANDARD_ATTRIBUTES = {
    "user": {
        "id": "STRING", "accountId": "STRING", "email": "STRING", "firstName": "STRING", "lastName": "STRING",
        "gender": "STRING", "title": "STRING", "jobTitle": "STRING", "phone": "STRING", "role": "STRING",
        "type": "STRING", "subscriptionId": "STRING", "sfdcContactId": "STRING",
        "firstVisitDate": "DATE_TIME", "signUpDate": "DATE_TIME", "leadDate": "DATE_TIME",
        "numberOfVisits": "NUMBER", "score": "NUMBER",
        "guidedTours": "BOOLEAN", "onboardingBot": "BOOLEAN", "productUpdates": "BOOLEAN", "surveys": "BOOLEAN",
        "trackUsage": "BOOLEAN", "globalUnsubscribe": "BOOLEAN", **_LOCATION,
    },
    "account": {
        "id": "STRING", "name": "STRING", "industry": "STRING", "naicsCode": "STRING", "plan": "STRING",
        "sfdcId": "STRING", "sicCode": "STRING", "website": "STRING", "dunsNumber": "STRING",
        "trackedSubscriptionId": "STRING", "parentGroupId": "STRING",
        "numberOfEmployees": "NUMBER", "numberOfUsers": "NUMBER", "numberOfVisitors": "NUMBER", **_LOCATION,
    },
}
# custom attributes a test subscription starts with (the loader's README example maps acceptDate and strtmp1)
DEFAULT_CUSTOM_ATTRIBUTES = {
    "user": {"acceptDate": "DATE_TIME", "strtmp1": "STRING", "plan": "STRING", "seats": "NUMBER", "beta": "BOOLEAN"},
    "account": {"renewalDate": "DATE_TIME", "tier": "STRING", "arr": "NUMBER"},
}

# Ids the API cannot take in a path; the reference gives body-id routes for them without listing the
# characters (https://px-apidocs.gainsight.com/operation/operation-deleteuserusingdelete): here an encoded
# slash, percent, backslash or semicolon, and dot segments, as HTTP servers commonly refuse them.
_UNSAFE_IN_PATH = re.compile(r"%2f|%25|%5c|%3b|;", re.I)

# longest first, so "<=" is not read as "<"; "=@" is the legacy encoded form the doc lists for "~"
# "!~" (no wildcard match) is an operator too: the filter syntax of https://px-apidocs.gainsight.com
# (DESIGN.md, corrected); the help-center page's table omits it
_CONDITION = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*(==|!=|<=|>=|=@|!~|~|<|>)(.*)$", re.S)


def api_error(status: int, code: str, message: str, sub_errors: list | None = None) -> JSONResponse:
    # the error body of the reference's examples (https://px-apidocs.gainsight.com) and of what Gainsight's
    # loader reads (externalapierror.subErrors[0].message: https://github.com/aptrinsic/px-data-loader)
    body = {"externalapierror": {"status": code, "message": message, "debugMessage": None, "subErrors": sub_errors}}
    return JSONResponse(body, status_code=status)


def _split_unescaped(text: str, separator: str) -> list[str]:
    """Split on ``separator`` where it is not backslash-escaped; escapes are kept for later."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text, flags=re.S)


def _lookup(record: dict, name: str) -> Any:
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            # custom attributes may be filtered on by their bare name
            custom = record.get("customAttributes") or {}
            return custom.get(name) if "." not in name and isinstance(custom, dict) else None
        value = value[part]
    return value


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


class _Condition:
    def __init__(self, text: str):
        match = _CONDITION.match(text)
        if not match:
            raise ValueError(f"cannot parse filter condition {_unescape(text)!r}: expected 'name operator expression'")
        self.name, operator, expression = match.groups()
        self.operator = "~" if operator == "=@" else operator
        self.expression = _unescape(expression)
        if self.operator in ("~", "!~"):
            # wildcard match anywhere in the value; filters are case-insensitive
            self._pattern = re.compile(fnmatch.translate(f"*{self.expression}*"), re.I | re.S)

    def matches(self, record: dict) -> bool:
        value = _lookup(record, self.name)
        if value is None:
            return self.operator in ("!=", "!~")
        if isinstance(value, bool):
            value = "true" if value else "false"
        if self.operator in ("~", "!~"):
            return bool(self._pattern.match(str(value))) == (self.operator == "~")
        left, right = _as_number(value), _as_number(self.expression)
        if left is None or right is None:
            left, right = str(value).casefold(), self.expression.casefold()
        return {
            "==": left == right,
            "!=": left != right,
            "<": left < right,
            "<=": left <= right,
            ">": left > right,
            ">=": left >= right,
        }[self.operator]


def parse_filters(values: list[str]) -> list[list[_Condition]]:
    """OR of filter parameters (and of unescaped commas inside one), each an AND of ``;`` conditions."""
    groups = []
    for value in values:
        for alternative in _split_unescaped(value, ","):
            groups.append([_Condition(part) for part in _split_unescaped(alternative, ";") if part.strip()])
    return groups


def _sort_key(value: Any) -> tuple:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (not number, value if number else str(value).casefold())


def _leaves(value: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) of every non-object value in a nested object."""
    leaves = []
    for key, sub in value.items():
        if isinstance(sub, dict):
            leaves += _leaves(sub, f"{prefix}{key}.")
        else:
            leaves.append((f"{prefix}{key}", sub))
    return leaves


def _merge(target: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _model_type(entity: str, name: str) -> str:
    """The model's apiName for a body field: the user identifier is ``id`` there."""
    return "id" if (entity, name) == ("users", "identifyId") else name


def _value_error(type_name: str, value: Any) -> str | None:
    """Why ``value`` does not fit an attribute of ``type_name``, or None."""
    if type_name == "DATE_TIME":
        if not isinstance(value, int) or isinstance(value, bool):
            return "must be milliseconds since the epoch (integer)"
    elif type_name == "NUMBER":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return "must be a number"
    elif type_name == "BOOLEAN":
        # Gainsight's own loader sends booleans as the strings "true"/"false"
        # (https://github.com/aptrinsic/px-data-loader, mapRecord): both forms are taken
        if not isinstance(value, bool) and str(value).lower() not in ("true", "false"):
            return "must be true or false"
    elif isinstance(value, (dict, list)):
        return "must be a single value"
    return None


class GainsightPXEmulator(Emulator):
    name = "gainsight_px"

    def __init__(
        self,
        *,
        api_key: str = "gpx-emulator-key",
        product_key: str = "AP-EMULATOR-2",
        rate_limit: int | None = 200,
        custom_attributes: dict[str, dict[str, str]] | None = None,
        **kwargs: Any,
    ):
        """``custom_attributes``: ``{"user"|"account": {apiName: STRING|DATE_TIME|BOOLEAN|NUMBER}}``, the
        account's own attributes (default ``DEFAULT_CUSTOM_ATTRIBUTES``)."""
        super().__init__(**kwargs)
        self.api_key = api_key
        self.product_key = product_key
        self.rate_limit = rate_limit
        self._limit = SlidingWindowLimit(rate_limit, 1.0, self.clock) if rate_limit else None
        custom = DEFAULT_CUSTOM_ATTRIBUTES if custom_attributes is None else custom_attributes
        self.custom_attributes = {kind: dict(custom.get(kind) or {}) for kind in STANDARD_ATTRIBUTES}
        for kind, attributes in self.custom_attributes.items():
            bad = {name: t for name, t in attributes.items() if t not in ATTRIBUTE_TYPES}
            if bad:
                raise ValueError(f"custom {kind} attribute types must be one of {ATTRIBUTE_TYPES}: {bad}")
        self.store: dict[str, dict[str, dict]] = {"users": {}, "accounts": {}}
        self.writes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.scrolls: collections.OrderedDict[str, tuple[str, list[str], int]] = collections.OrderedDict()
        self.throttled = 0
        self.list_queries: collections.deque[str] = collections.deque(maxlen=100)  # raw query strings, for tests
        self.deletions: list[tuple[str, str, bool]] = []
        self.events: list[dict] = []
        self._scroll_ids = itertools.count(1)

    # --- harness -------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        routes = [
            Route(f"{CONTROL_PREFIX}/seed", self._control_seed, methods=["POST"]),
            # https://px-apidocs.gainsight.com/operation/operation-getmodelattributesusingget
            Route("/v1/admin/model/{kind}/attributes", self._model, methods=["GET"]),
            Route("/v1/events/custom", self._custom_event, methods=["POST"]),
        ]
        for entity in ENTITIES:
            routes += [
                Route(f"/v1/{entity}", self._collection, methods=["GET", "POST"]),
                # body-id variants, before the path-id routes: https://px-apidocs.gainsight.com/operation/
                # operation-updateuserusingput and operation-deleteuserusingdelete (accounts alike, DESIGN.md)
                Route(f"/v1/{entity}/update", self._item, methods=["PUT"]),
                Route(f"/v1/{entity}/delete", self._item, methods=["DELETE"]),
                Route(f"/v1/{entity}/{{record_id:path}}", self._item, methods=["GET", "PUT", "DELETE"]),
            ]
        return routes

    def connection(self) -> dict[str, Any]:
        return {"conn_type": self.name, "password": self.api_key,
                "extra": {"base_url": f"{self.url}/v1", "product_key": self.product_key}}

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {**super().summary(), "users": len(self.store["users"]), "accounts": len(self.store["accounts"]),
                    "writes": sum(self.writes.values()), "throttled": self.throttled, "events": len(self.events)}

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "users": dict(self.store["users"]),
                "accounts": dict(self.store["accounts"]),
                "writes": {f"{entity}/{key}": n for (entity, key), n in self.writes.items()},
                "throttled": self.throttled,
                "deletions": list(self.deletions),
                "events": list(self.events),
            }

    def reset(self) -> None:
        super().reset()
        with self.lock:
            for records in self.store.values():
                records.clear()
            self.writes.clear()
            self.scrolls.clear()
            self.list_queries.clear()
            self.deletions.clear()
            self.events.clear()
            self.throttled = 0

    def seed(self, users: list[dict] = (), accounts: list[dict] = ()) -> None:
        """Put records straight into the store (not counted as writes)."""
        with self.lock:
            for entity, records in (("users", users), ("accounts", accounts)):
                id_field = ENTITIES[entity][0]
                for record in records:
                    self.store[entity][str(record[id_field])] = dict(record)

    def attributes(self, kind: str) -> dict[str, str]:
        """apiName -> type of the ``user`` or ``account`` model: standard plus custom attributes."""
        return {**STANDARD_ATTRIBUTES[kind], **self.custom_attributes[kind]}

    async def _control_seed(self, request: Request) -> Response:
        body = await request.json()
        self.seed(users=body.get("users", []), accounts=body.get("accounts", []))
        with self.lock:
            return JSONResponse({entity: len(records) for entity, records in self.store.items()})

    # --- request guards ------------------------------------------------------------------------
    def _guard(self, request: Request) -> Response | None:
        # the key header: the help center's "Working with the Aptrinsic REST API" (vendor-docs 002,
        # https://support.gainsight.com/PX/API/Work_with_the_Gainsight_PX_REST_API); 401 "Unauthorized or bad
        # API Key" in the reference's responses; 403 for a key that is not this subscription's (inferred)
        key = request.headers.get("x-aptrinsic-api-key")
        if not key:
            return api_error(401, "UNAUTHORIZED", "Missing API key header X-APTRINSIC-API-KEY")
        if key != self.api_key:
            return api_error(403, "FORBIDDEN", "Invalid API key")
        # "around 200 requests per second and 1 Million requests per day" (https://support.gainsight.com/PX/
        # API_for_Developers/02Usage_of_Different_APIs/Work_with_the_Gainsight_PX_REST_API);
        # 429 "Rate limit exceeded" in the reference; the daily quota is not emulated (the loader's
        # max_requests keeps under it), Retry-After is an assumption (no 429 body or header is documented)
        if self._limit is not None:
            wait = self._limit.hit()
            if wait:
                with self.lock:
                    self.throttled += 1
                seconds = max(1, int(wait + 0.999))
                response = api_error(429, "TOO_MANY_REQUESTS", "Rate limit exceeded")
                response.headers["Retry-After"] = str(seconds)
                return response
        return None

    @staticmethod
    def _entity(request: Request) -> str:
        return request.url.path.split("/")[2]

    async def _json_object(self, request: Request) -> dict | Response:
        # "All API data ... is JSON encoded with UTF-8 as either a single JSON object" (vendor-docs 002)
        try:
            body = await request.json()
        except ValueError:
            return api_error(400, "BAD_REQUEST", "Malformed JSON request")
        if not isinstance(body, dict):
            return api_error(400, "BAD_REQUEST", "Request body must be a JSON object")
        return body

    def _invalid_fields(self, entity: str, body: dict, creating: bool) -> list[dict]:
        id_field, _, required = ENTITIES[entity]
        errors = []
        for name in required if creating else ("propertyKeys",):
            if body.get(name) in (None, "", []):
                errors.append({"field": name, "message": f"{name} is required"})
        keys = body.get("propertyKeys")
        if keys not in (None, []) and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            errors.append({"field": "propertyKeys", "message": "must be a list of product keys"})
        for name in OBJECT_FIELDS & body.keys():
            if not isinstance(body[name], dict):
                errors.append({"field": name, "message": "must be an object"})
        # values are typed by the subscription's model (the reference's attribute types STRING, DATE_TIME,
        # BOOLEAN, NUMBER: https://px-apidocs.gainsight.com/operation/operation-getmodelattributesusingget);
        # nested location fields go by their own name, as Gainsight's loader looks them up; attributes
        # the model does not know are let through (no source says what the API does with them)
        model = self.attributes(MODEL_TYPES[entity])
        fields: list[tuple[str, str, Any]] = []
        for name, value in body.items():
            if name in ("location", "customAttributes") and isinstance(value, dict):
                for sub, sub_value in _leaves(value):
                    fields.append((f"{name}.{sub}", sub.rsplit(".", 1)[-1], sub_value))
            elif name != "propertyKeys":
                fields.append((name, _model_type(entity, name), value))
        for field, api_name, value in fields:
            type_name = "DATE_TIME" if field in SYSTEM_DATE_FIELDS else model.get(api_name)
            reason = _value_error(type_name, value) if type_name and value is not None else None
            if reason:
                errors.append({"field": field, "message": reason})
        return errors

    def _unknown_product(self, entity: str, body: dict) -> list[dict]:
        # inferred: propertyKeys name the subscription's products ("AP-XXXXXXXXXX-2" in the reference's
        # example); checked on user creates only, lenient elsewhere
        if entity == "users" and self.product_key not in (body.get("propertyKeys") or []):
            return [{"field": "propertyKeys", "message": f"unknown product key(s) {body.get('propertyKeys')}"}]
        return []

    # --- handlers ------------------------------------------------------------------------------
    async def _model(self, request: Request) -> Response:
        denied = self._guard(request)
        if denied:
            return denied
        kind = request.path_params["kind"]
        if kind not in STANDARD_ATTRIBUTES:  # "404 Type not found" in the reference
            return api_error(404, "NOT_FOUND", f"Type {kind} not found")
        created = 1546300800000
        attributes = [
            {"id": f"{kind}-{name}", "name": name, "apiName": name, "internalName": name, "description": None,
             "type": type_name, "state": "ENABLED",
             "origin": "CUSTOM" if name in self.custom_attributes[kind] else "DEFAULT",
             "createdDate": created, "modifiedDate": created, "defaultValue": None}
            for name, type_name in self.attributes(kind).items()
        ]
        return JSONResponse(attributes)

    async def _custom_event(self, request: Request) -> Response:
        # body fields as Gainsight's loader sends them (identifyId, eventName, date in epoch ms, attributes,
        # accountId, url, referrer, remoteHost, propertyKey, userType:
        # https://github.com/aptrinsic/px-data-loader, loadData); which are required is not published:
        # the user and the event name, without which an event means nothing, are; the rest is lenient
        denied = self._guard(request)
        if denied:
            return denied
        body = await self._json_object(request)
        if isinstance(body, Response):
            return body
        errors = [{"field": name, "message": f"{name} is required"}
                  for name in ("identifyId", "eventName") if body.get(name) in (None, "")]
        if "date" in body and _value_error("DATE_TIME", body["date"]):
            errors.append({"field": "date", "message": _value_error("DATE_TIME", body["date"])})
        if "attributes" in body and not isinstance(body["attributes"], dict):
            errors.append({"field": "attributes", "message": "must be an object"})
        if errors:
            return api_error(400, "BAD_REQUEST", "Validation failed", errors)
        with self.lock:
            event = {"eventId": str(uuid.uuid4()), **body}
            self.events.append(event)
        return JSONResponse(event, status_code=201)  # the loader checks for 201

    async def _collection(self, request: Request) -> Response:
        denied = self._guard(request)
        if denied:
            return denied
        entity = self._entity(request)
        if request.method == "GET":
            return self._list(request, entity)
        body = await self._json_object(request)
        if isinstance(body, Response):
            return body
        id_field = ENTITIES[entity][0]
        errors = self._invalid_fields(entity, body, creating=True)
        errors = errors or self._unknown_product(entity, body)
        if errors:
            return api_error(400, "BAD_REQUEST", "Validation failed", errors)
        key = str(body[id_field])
        now_ms = int(self.clock.now() * 1000)
        with self.lock:
            if key in self.store[entity]:
                # a duplicate create is a 400 "possible duplicate", not a 409 (DESIGN.md, corrected from
                # the create operations of https://px-apidocs.gainsight.com, whose only 4xx is 400)
                return api_error(400, "BAD_REQUEST", f"Bad request, possible duplicate: {id_field} {key} exists")
            record = {"aptrinsicId": str(uuid.uuid4()), "createDate": now_ms, **body, "lastModifiedDate": now_ms}
            self.store[entity][key] = record
            self.writes[(entity, key)] += 1
            return JSONResponse(record, status_code=201)

    async def _item(self, request: Request) -> Response:
        denied = self._guard(request)
        if denied:
            return denied
        entity = self._entity(request)
        id_field = ENTITIES[entity][0]
        by_body = "record_id" not in request.path_params
        hard = request.query_params.get("hardDelete", "false").lower()
        if request.method == "DELETE" and hard not in ("true", "false"):  # a boolean in the reference
            return api_error(400, "BAD_REQUEST", "hardDelete must be true or false")
        body: dict = {}
        if by_body or request.method == "PUT":
            parsed = await self._json_object(request)
            if isinstance(parsed, Response):
                return parsed
            body = parsed
        if by_body:
            key = body.get(id_field)
            if not isinstance(key, str) or not key:
                return api_error(400, "BAD_REQUEST", "Validation failed",
                                 [{"field": id_field, "message": f"{id_field} is required"}])
        else:
            key = request.path_params["record_id"]
            raw = request.scope.get("raw_path", b"").decode("latin-1").split("/", 3)[-1]
            if not key or "/" in key or key in (".", "..") or _UNSAFE_IN_PATH.search(raw):
                return api_error(400, "BAD_REQUEST", "The request was rejected because the URL was not normalized")
        if request.method == "PUT":
            errors = self._invalid_fields(entity, body, creating=False)
            if id_field in body and str(body[id_field]) != key:  # inferred: a PUT cannot rename a record
                errors.append({"field": id_field, "message": f"does not match the path ({key})"})
            if errors:
                return api_error(400, "BAD_REQUEST", "Validation failed", errors)
        with self.lock:
            # ids are case-sensitive here, unlike filters ("Case Sensitivity", vendor-docs 002)
            record = self.store[entity].get(key)
            if record is None:
                return api_error(404, "NOT_FOUND", f"No {entity[:-1]} found with {id_field} {key}")
            if request.method == "GET":
                return JSONResponse(record)
            if request.method == "DELETE":
                # hardDelete: https://px-apidocs.gainsight.com/operation/operation-deleteuserusingdelete_1;
                # a soft delete's 7-day revival is not emulated (the record is gone either way)
                del self.store[entity][key]
                self.deletions.append((entity, key, hard == "true"))
                return Response(status_code=204)
            _merge(record, body)
            record["lastModifiedDate"] = int(self.clock.now() * 1000)
            self.writes[(entity, key)] += 1
            return Response(status_code=204)

    def _list(self, request: Request, entity: str) -> Response:
        # pageSize default 25, max 1000, scrollId for the next page, the filter syntax: vendor-docs 002
        # (https://support.gainsight.com/PX/API/Work_with_the_Gainsight_PX_REST_API); an unknown scrollId and
        # an unreadable filter answer 400 (the reference's "Bad request"); sort is lenient
        params = request.query_params
        self.list_queries.append(request.url.query)
        try:
            page_size = int(params.get("pageSize", DEFAULT_PAGE_SIZE))
        except ValueError:
            return api_error(400, "BAD_REQUEST", "pageSize must be an integer")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            return api_error(400, "BAD_REQUEST", f"pageSize must be between 1 and {MAX_PAGE_SIZE}")
        _, list_key, _ = ENTITIES[entity]
        with self.lock:
            scroll_id = params.get("scrollId")
            if scroll_id:
                if scroll_id not in self.scrolls or self.scrolls[scroll_id][0] != entity:
                    return api_error(400, "BAD_REQUEST", "Invalid or expired scrollId")
                _, keys, offset = self.scrolls[scroll_id]
            else:
                try:
                    groups = parse_filters(params.getlist("filter"))
                except ValueError as exc:
                    return api_error(400, "BAD_REQUEST", str(exc))
                records = [
                    record for record in self.store[entity].values()
                    if not groups or any(all(condition.matches(record) for condition in group) for group in groups)
                ]
                for sort in reversed(params.getlist("sort")):
                    descending = sort.startswith("-")
                    name = sort.lstrip("+-")
                    records.sort(key=lambda r: _sort_key(_lookup(r, name)), reverse=descending)
                    # records without the field go last in either direction
                    records = [r for r in records if _lookup(r, name) is not None] + [
                        r for r in records if _lookup(r, name) is None
                    ]
                keys, offset = [str(r[ENTITIES[entity][0]]) for r in records], 0
                scroll_id = f"scroll-{next(self._scroll_ids)}-{uuid.uuid4().hex[:8]}"
            page = [self.store[entity][k] for k in keys[offset : offset + page_size] if k in self.store[entity]]
            self.scrolls[scroll_id] = (entity, keys, offset + page_size)
            self.scrolls.move_to_end(scroll_id)
            while len(self.scrolls) > MAX_OPEN_SCROLLS:
                self.scrolls.popitem(last=False)
            # the scrollId keeps coming on the last page too, as the real API does
            return JSONResponse({list_key: page, "scrollId": scroll_id, "totalHits": len(keys)})
