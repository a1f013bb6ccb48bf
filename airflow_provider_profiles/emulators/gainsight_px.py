"""Gainsight PX (Aptrinsic) REST API emulator: users and accounts, one record per request.

Serves the vendor paths under ``/v1``:

- ``GET /v1/users`` (list: ``pageSize`` <= 1000, ``scrollId``, repeated ``filter``, ``sort``),
  ``POST /v1/users`` (201; ``identifyId`` and ``propertyKeys`` required), ``GET|PUT|DELETE
  /v1/users/{identifyId}`` (PUT answers 204, 404 when missing). ``/v1/accounts`` likewise (``id`` and
  ``name`` required on create).
- Header ``X-APTRINSIC-API-KEY``: missing -> 401, wrong -> 403.
- Errors use the vendor body ``{"externalapierror": {"status", "message", "debugMessage", "subErrors"}}``.
- ``rate_limit`` requests per second (sliding window) -> 429 with Retry-After; ``latency`` per request.
- Scroll pagination as the API behaves: a ``scrollId`` comes back on every page, the last one
  included, so a client must stop on a short page.

Test helpers: ``seed(users=[...], accounts=[...])`` (also ``POST /_emulator/seed``), ``writes``
(successful creates/updates per record, to prove nothing was lost or written twice), ``throttled``
(429s answered) and ``list_queries`` (raw query strings of list calls).
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

from airflow_provider_profiles.emulators.base import (
    CONTROL_PREFIX,
    Emulator,
    SlidingWindowLimit,
)

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 25
MAX_OPEN_SCROLLS = 1000

# entity path -> (identifier field, list key, fields required on create)
ENTITIES = {
    "users": ("identifyId", "users", ("identifyId", "propertyKeys")),
    "accounts": ("id", "accounts", ("id", "name")),
}
DATE_FIELDS = frozenset({"signUpDate", "lastSeenDate", "firstVisitDate", "createDate", "lastModifiedDate"})
NUMBER_FIELDS = frozenset({"score", "numberOfVisits", "numberOfEmployees", "numberOfUsers"})
OBJECT_FIELDS = frozenset({"location", "customAttributes"})

# longest first, so "<=" is not read as "<"; "=@" is the legacy encoded form the doc lists for "~"
_CONDITION = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*(==|!=|<=|>=|=@|~|<|>)(.*)$", re.S)


def api_error(status: int, code: str, message: str, sub_errors: list | None = None) -> JSONResponse:
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
        if self.operator == "~":
            # wildcard match anywhere in the value; filters are case-insensitive
            self._pattern = re.compile(fnmatch.translate(f"*{self.expression}*"), re.I | re.S)

    def matches(self, record: dict) -> bool:
        value = _lookup(record, self.name)
        if value is None:
            return self.operator == "!="
        if isinstance(value, bool):
            value = "true" if value else "false"
        if self.operator == "~":
            return bool(self._pattern.match(str(value)))
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


def _merge(target: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


class GainsightPXEmulator(Emulator):
    name = "gainsight_px"

    def __init__(
        self,
        *,
        api_key: str = "gpx-emulator-key",
        product_key: str = "AP-EMULATOR-2",
        rate_limit: int | None = 200,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.api_key = api_key
        self.product_key = product_key
        self.rate_limit = rate_limit
        self._limit = SlidingWindowLimit(rate_limit, 1.0, self.clock) if rate_limit else None
        self.store: dict[str, dict[str, dict]] = {"users": {}, "accounts": {}}
        self.writes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.scrolls: collections.OrderedDict[str, tuple[str, list[str], int]] = collections.OrderedDict()
        self.throttled = 0
        self.list_queries: collections.deque[str] = collections.deque(maxlen=100)  # raw query strings, for tests
        self._scroll_ids = itertools.count(1)

    # --- harness -------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        routes = [Route(f"{CONTROL_PREFIX}/seed", self._control_seed, methods=["POST"])]
        for entity in ENTITIES:
            routes += [
                Route(f"/v1/{entity}", self._collection, methods=["GET", "POST"]),
                Route(f"/v1/{entity}/{{record_id:path}}", self._item, methods=["GET", "PUT", "DELETE"]),
            ]
        return routes

    def connection(self) -> dict[str, Any]:
        return {"conn_type": self.name, "password": self.api_key,
                "extra": {"base_url": f"{self.url}/v1", "product_key": self.product_key}}

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {**super().summary(), "users": len(self.store["users"]), "accounts": len(self.store["accounts"]),
                    "writes": sum(self.writes.values()), "throttled": self.throttled}

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "users": dict(self.store["users"]),
                "accounts": dict(self.store["accounts"]),
                "writes": {f"{entity}/{key}": n for (entity, key), n in self.writes.items()},
                "throttled": self.throttled,
            }

    def reset(self) -> None:
        super().reset()
        with self.lock:
            for records in self.store.values():
                records.clear()
            self.writes.clear()
            self.scrolls.clear()
            self.list_queries.clear()
            self.throttled = 0

    def seed(self, users: list[dict] = (), accounts: list[dict] = ()) -> None:
        """Put records straight into the store (not counted as writes)."""
        with self.lock:
            for entity, records in (("users", users), ("accounts", accounts)):
                id_field = ENTITIES[entity][0]
                for record in records:
                    self.store[entity][str(record[id_field])] = dict(record)

    async def _control_seed(self, request: Request) -> Response:
        body = await request.json()
        self.seed(users=body.get("users", []), accounts=body.get("accounts", []))
        with self.lock:
            return JSONResponse({entity: len(records) for entity, records in self.store.items()})

    # --- request guards ------------------------------------------------------------------------
    def _guard(self, request: Request) -> Response | None:
        key = request.headers.get("x-aptrinsic-api-key")
        if not key:
            return api_error(401, "UNAUTHORIZED", "Missing API key header X-APTRINSIC-API-KEY")
        if key != self.api_key:
            return api_error(403, "FORBIDDEN", "Invalid API key")
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
        try:
            body = await request.json()
        except ValueError:
            return api_error(400, "BAD_REQUEST", "Malformed JSON request")
        if not isinstance(body, dict):
            return api_error(400, "BAD_REQUEST", "Request body must be a JSON object")
        return body

    @staticmethod
    def _invalid_fields(entity: str, body: dict, creating: bool) -> list[dict]:
        id_field, _, required = ENTITIES[entity]
        errors = []
        if creating:
            for name in required:
                if body.get(name) in (None, "", []):
                    errors.append({"field": name, "message": f"{name} is required"})
            keys = body.get("propertyKeys")
            if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
                errors.append({"field": "propertyKeys", "message": "must be a list of product keys"})
        for name in DATE_FIELDS & body.keys():
            value = body[name]
            if not isinstance(value, int) or isinstance(value, bool):
                errors.append({"field": name, "message": "must be milliseconds since the epoch (integer)"})
        for name in NUMBER_FIELDS & body.keys():
            value = body[name]
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                errors.append({"field": name, "message": "must be a number"})
        for name in OBJECT_FIELDS & body.keys():
            if not isinstance(body[name], dict):
                errors.append({"field": name, "message": "must be an object"})
        return errors

    # --- handlers ------------------------------------------------------------------------------
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
        if entity == "users" and not errors and self.product_key not in body["propertyKeys"]:
            errors.append({"field": "propertyKeys", "message": f"unknown product key(s) {body['propertyKeys']}"})
        if errors:
            return api_error(400, "BAD_REQUEST", "Validation failed", errors)
        key = str(body[id_field])
        now_ms = int(self.clock.now() * 1000)
        with self.lock:
            if key in self.store[entity]:
                return api_error(409, "CONFLICT", f"{id_field} {key} already exists")
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
        key = request.path_params["record_id"]
        if request.method == "PUT":
            body = await self._json_object(request)
            if isinstance(body, Response):
                return body
            errors = self._invalid_fields(entity, body, creating=False)
            if id_field in body and str(body[id_field]) != key:
                errors.append({"field": id_field, "message": f"does not match the path ({key})"})
            if errors:
                return api_error(400, "BAD_REQUEST", "Validation failed", errors)
        with self.lock:
            record = self.store[entity].get(key)  # ids are case-sensitive here, unlike filters
            if record is None:
                return api_error(404, "NOT_FOUND", f"No {entity[:-1]} found with {id_field} {key}")
            if request.method == "GET":
                return JSONResponse(record)
            if request.method == "DELETE":
                del self.store[entity][key]
                return Response(status_code=204)
            _merge(record, body)
            record["lastModifiedDate"] = int(self.clock.now() * 1000)
            self.writes[(entity, key)] += 1
            return Response(status_code=204)

    def _list(self, request: Request, entity: str) -> Response:
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
