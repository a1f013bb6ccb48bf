"""Localytics Profile Imports and Audience Imports, emulated.

Contract: help.uplandsoftware.com/localytics/dev/import-apis.html ("Profile Imports", "Audience
Imports"; vendor-docs/003), value rules from v4docs.localytics.com/Marketing/Profiles/custom_profiles.html
and help.uplandsoftware.com/localytics/dev/profile-api.html. Each rule below names its source where it
is enforced; what the pages leave open is accepted (lenient) and marked "no source".
- HTTP Basic auth with the org API key and secret: 401 when wrong, 403 when the org/app is not
  one the key may use, 404 for unknown activity or list ids, 429 (with Retry-After) past the limits.
- ``POST /v1/imports/profiles/upload`` (multipart ``org_id`` xor ``app_id``, ``format``, ``file``)
  -> 202 ``{"activity_id"}``; ``GET /v1/imports/profiles/status/{activity_id}``. Limits per key:
  uploads 10 per hour, status 60 per minute.
- ``POST /v1/imports/audiences/list/`` (``app_id``, ``audience_name``, ``identifier_type``, ``file``)
  -> 202 ``{"activity_id"}``; ``GET .../list/status/{activity_id}``; ``PUT .../list/{id}`` (replace);
  ``PUT .../list/{id}/name?name=``; ``DELETE .../list/{id}``; ``GET .../list/app/{app_id}``.
  Audience imports 60 requests per minute per key, their status endpoint another 60 per minute;
  at most 500 lists per key.

Jobs go Pending -> Running -> Completed (or Failed when no line could be imported) on emulated
time (``pending_seconds``, ``running_seconds``). Each line of an import file is validated; failed
lines are counted and listed in an error log served, like the vendor's S3 object, without auth.
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import io
import itertools
import json
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airflow_provider_profiles.testing.base import (
    Emulator,
    SlidingWindowLimit,
    too_many_requests,
)

# The five ops of the import file example (import-apis.html, "Import File Format")
PROFILE_OPS = ("assign", "set-add", "set-remove", "increment", "delete")
# "numeric integers or strings of 255 characters or less"
# (v4docs.localytics.com/Marketing/Profiles/custom_profiles.html)
MAX_STRING = 255
# The sample error_log is an S3 object URL (import-apis.html, "Requesting the Status of Import Jobs"):
# served here without auth, as a foreign host would be.
ERROR_LOG_PREFIX = "/errors"


class LocalyticsEmulator(Emulator):
    name = "localytics"

    def __init__(
        self,
        *,
        api_key: str = "localytics-key",
        api_secret: str = "localytics-secret",
        org_ids: tuple[str, ...] | list[str] = ("60",),
        app_ids: tuple[str, ...] | list[str] = ("app-1", "app-2"),
        # durations are ours ("usually take less than 5 minutes to complete, once Running", import-apis.html)
        pending_seconds: float = 0.5,
        running_seconds: float = 1.0,
        # Limits per API key, all from import-apis.html: "Profile Imports" and its status endpoint
        # ("Rate Limits"), "Audience Imports" and its status endpoint ("Rate Limits"), "500 Audience Lists".
        upload_limit: tuple[int, float] | list = (10, 3600),
        status_limit: tuple[int, float] | list = (60, 60),
        audience_limit: tuple[int, float] | list = (60, 60),
        audience_status_limit: tuple[int, float] | list = (60, 60),
        max_lists: int = 500,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.api_key, self.api_secret = api_key, api_secret
        self.org_ids = {str(o) for o in org_ids}
        self.app_ids = {str(a) for a in app_ids}
        self.pending_seconds, self.running_seconds = float(pending_seconds), float(running_seconds)
        self.limit_settings = {
            "upload": tuple(upload_limit),
            "status": tuple(status_limit),
            "audiences": tuple(audience_limit),
            "audience_status": tuple(audience_status_limit),
        }
        self.max_lists = max_lists
        self._init_state()

    def _init_state(self) -> None:
        self.limits = {
            name: SlidingWindowLimit(int(n), float(p), self.clock) for name, (n, p) in self.limit_settings.items()
        }
        self.jobs: dict[str, dict[str, Any]] = {}  # activity id -> job (both kinds)
        self.profiles: dict[str, dict[str, dict[str, Any]]] = {}  # "org_id:60" -> customer id -> attributes
        self.audiences: dict[int, dict[str, Any]] = {}  # audience list id -> list
        self.throttled: dict[str, int] = {name: 0 for name in self.limit_settings}
        self.error_log_fetches: list[dict[str, Any]] = []
        self._list_ids = itertools.count(31245)

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self._init_state()

    def routes(self) -> list[Route]:
        # Every route and method: import-apis.html ("Endpoint" of each transaction). Any other path is
        # 404, as the page says of an unknown source type ("it should always be profiles").
        audiences = "/v1/imports/audiences/list"
        return [
            Route("/v1/imports/profiles/upload", self._upload_profiles, methods=["POST"]),
            Route("/v1/imports/profiles/status/{activity_id}", self._profile_status, methods=["GET"]),
            Route(f"{audiences}/", self._create_audience, methods=["POST"]),
            Route(audiences, self._create_audience, methods=["POST"]),  # without the slash: lenient, no source
            Route(f"{audiences}/status/{{activity_id}}", self._audience_status, methods=["GET"]),
            Route(f"{audiences}/app/{{app_id}}", self._list_audiences, methods=["GET"]),
            Route(f"{audiences}/{{list_id:int}}/name", self._rename_audience, methods=["PUT"]),
            Route(f"{audiences}/{{list_id:int}}", self._audience_list, methods=["PUT", "DELETE"]),
            Route(f"{ERROR_LOG_PREFIX}/{{activity_id}}/errors.json", self._error_log, methods=["GET"]),
            # Profile API (help.uplandsoftware.com/localytics/dev/profile-api.html): profile.localytics.com
            # in production, here on the same host
            Route("/v1/profiles/{customer_id}", self._delete_profile, methods=["DELETE"]),
            Route("/v1/apps/{app_id}/profiles/{customer_id}", self._delete_profile, methods=["DELETE"]),
        ]

    def connection(self) -> dict[str, Any]:
        return {"conn_type": self.name, "login": self.api_key, "password": self.api_secret,
                "extra": {"base_url": f"{self.url}/v1", "org_id": min(self.org_ids)}}

    def summary(self) -> dict[str, Any]:
        snapshot = self.snapshot()
        statuses: dict[str, int] = {}
        for job in snapshot["jobs"].values():
            statuses[job["status"]] = statuses.get(job["status"], 0) + 1
        return {**super().summary(), "imports": statuses,
                "profiles": sum(len(customers) for customers in snapshot["profiles"].values()),
                "audiences": len(snapshot["audiences"]), "throttled": snapshot["throttled"]}

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            for activity_id in self.jobs:
                self._settle(activity_id)
            return {
                "jobs": {a: self._public_job(a) for a in self.jobs},
                "profiles": json.loads(json.dumps(self.profiles)),
                "audiences": {str(i): self._list_view(i) for i in self.audiences},
                "throttled": dict(self.throttled),
                "error_log_fetches": list(self.error_log_fetches),
            }

    # --- request guards -----------------------------------------------------------------------
    def _check(self, request: Request, limit: str) -> Response | None:
        """401 for bad credentials, then 429 past the key's limit for this route; None when allowed."""
        # 401 and 429: import-apis.html, "HTTP Response Codes" of both APIs
        if not self._authenticated(request):
            return JSONResponse({"error": "The provided authentication parameters were not valid."}, status_code=401)
        wait = self.limits[limit].hit()
        if wait > 0:
            with self.lock:
                self.throttled[limit] += 1
            # the limit runs on emulated time; the client sleeps in real time. Retry-After: no source
            # (the page documents none), an extra a client must not depend on
            body = {"error": f"Rate limit exceeded for {limit}; retry later."}
            return too_many_requests(wait / self.clock.scale, body)
        return None

    def _authenticated(self, request: Request) -> bool:
        # "Basic Access Authentication" with the org API key and secret (import-apis.html, "Authentication")
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            key, _, secret = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return key == self.api_key and secret == self.api_secret

    @staticmethod
    def _error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def _forbidden_app(self, app_id: str) -> JSONResponse | None:
        # 403 "credentials do not have access to the specified organization or application" (import-apis.html)
        if app_id not in self.app_ids:
            return self._error(403, f"The API credentials do not have access to application {app_id}.")
        return None

    # --- profiles -----------------------------------------------------------------------------
    async def _upload_profiles(self, request: Request) -> Response:
        denied = self._check(request, "upload")
        if denied:
            return denied
        form = await request.form()
        # "Import Parameters" (import-apis.html): app_id or org_id, format and file are Required, the scope
        # "for an organization or specific application, but not both". The page's code table has none for
        # a missing or wrong parameter: 400 is this emulator's choice.
        org_id, app_id = _text(form.get("org_id")), _text(form.get("app_id"))
        if bool(org_id) == bool(app_id):
            return self._error(400, "Exactly one of org_id or app_id is required.")
        if org_id and org_id not in self.org_ids:
            return self._error(403, f"The API credentials do not have access to organization {org_id}.")
        if app_id and (forbidden := self._forbidden_app(app_id)):
            return forbidden
        # "The format must be one of the following" (import-apis.html): json from the page's example; csv
        # from the dashboard's CSV profile upload (docs.localytics.com/docs/marketing/profiles-usage), inferred
        file_format = _text(form.get("format"))
        if file_format not in ("json", "csv"):
            return self._error(400, f"format must be json or csv, got {file_format!r}.")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return self._error(400, "file is required (multipart file part).")
        content = await upload.read()
        target = {"org_id": org_id} if org_id else {"app_id": app_id}
        changes, errors, total = _parse_profile_file(content, file_format)
        activity_id = self._new_job(
            "profiles", target=target, changes=changes, errors=errors, total=total, format=file_format
        )
        # 202 {"activity_id"} (import-apis.html, "Response")
        return JSONResponse({"activity_id": activity_id}, status_code=202)

    async def _profile_status(self, request: Request) -> Response:
        return self._job_status(request, "profiles", limit="status")

    def _job_status(self, request: Request, kind: str, limit: str) -> Response:
        denied = self._check(request, limit)
        if denied:
            return denied
        activity_id = request.path_params["activity_id"]
        with self.lock:
            job = self.jobs.get(activity_id)
            if job is None or job["kind"] != kind:
                # 404: the audience code table's "Parameter not found"; the profile table names no code for
                # an unknown activity id, 404 is inferred from it
                return self._error(404, f"Unknown activity id {activity_id}.")
            if self._status(job) in ("Completed", "Failed") and self.hold_end(activity_id):
                return JSONResponse(self._public_job(activity_id, status="Running"))
            self._settle(activity_id)
            return JSONResponse(self._public_job(activity_id))

    def _apply_profiles(self, job: dict[str, Any]) -> None:
        # What each op does is read from its name and the page's example; details the page leaves open
        # (increment of a missing attribute starts at 0, set ops on a non-set start empty) are ours.
        scope = ":".join(next(iter(job["target"].items())))
        store = self.profiles.setdefault(scope, {})
        for customer_id, changes in job["changes"]:
            profile = store.setdefault(customer_id, {})
            for change in changes:
                op, attr, value = change["op"], change["attr"], change.get("value")
                if op == "assign":
                    profile[attr] = value
                elif op == "delete":
                    profile.pop(attr, None)
                elif op == "increment":
                    current = profile.get(attr, 0)
                    profile[attr] = (current if isinstance(current, int) else 0) + value
                else:
                    members = list(profile.get(attr) or []) if isinstance(profile.get(attr), list) else []
                    if op == "set-add":
                        members += [v for v in value if v not in members]
                    else:
                        members = [v for v in members if v not in value]
                    profile[attr] = members

    # --- audiences ----------------------------------------------------------------------------
    async def _create_audience(self, request: Request) -> Response:
        denied = self._check(request, "audiences")
        if denied:
            return denied
        form = await request.form()
        # app_id, audience_name, identifier_type and file are Required (import-apis.html, Audience Imports
        # "Import Parameters"); a missing one is "404 Parameter not found" ("HTTP Response Codes").
        app_id, name = _text(form.get("app_id")), _text(form.get("audience_name"))
        missing = _require(app_id=app_id, audience_name=name, identifier_type=_text(form.get("identifier_type")))
        if missing:
            return self._error(404, missing)
        if problem := _identifier_type(form):
            return self._error(400, problem)
        if forbidden := self._forbidden_app(app_id):
            return forbidden
        ids, errors, total, missing = await _read_audience_file(form)
        if missing:
            return self._error(404, missing)
        with self.lock:
            # "500 Audience Lists", listed among the limits "per API Key" (import-apis.html, "Rate Limits"):
            # counted over all the key's apps. The page gives no code for it; 400 is ours (not 429: waiting
            # does not free a list).
            in_use = len(self.audiences)
            reserved = sum(
                1 for j in self.jobs.values()
                if j["kind"] == "audiences" and j["action"] == "create" and not j["settled"]
            )
            if in_use + reserved >= self.max_lists:
                return self._error(400, f"The API key already has {self.max_lists} audience lists.")
            activity_id = self._new_job(
                "audiences", action="create", app_id=app_id, name=name, list_id=next(self._list_ids),
                ids=ids, errors=errors, total=total,
            )
        # 202 {"activity_id"} (import-apis.html, Audience Imports "Response"; its code table says 200)
        return JSONResponse({"activity_id": activity_id}, status_code=202)

    async def _audience_status(self, request: Request) -> Response:
        # the audience status endpoint has its own "60 requests per minute" (import-apis.html, "Rate Limits")
        return self._job_status(request, "audiences", limit="audience_status")

    async def _audience_list(self, request: Request) -> Response:
        denied = self._check(request, "audiences")
        if denied:
            return denied
        list_id = request.path_params["list_id"]
        with self.lock:
            self._settle_all()
            audience = self.audiences.get(list_id)
        if audience is None:  # "404 Parameter not found" (import-apis.html, Audience Imports)
            return self._error(404, f"Unknown audience list {list_id}.")
        if request.method == "DELETE":
            with self.lock:
                self.audiences.pop(list_id, None)
            # "Deleting an Audience List" shows no response: this body is ours (no source)
            return JSONResponse({"id": list_id, "deleted": True})
        form = await request.form()
        # "Updating an Audience Import" (import-apis.html): app_id, identifier_type and file Required
        # (missing: 404 "Parameter not found"). Its form field audience_list_id repeats the path and is not
        # required here, nor that app_id be the list's own app: lenient, no source.
        app_id = _text(form.get("app_id"))
        missing = _require(app_id=app_id, identifier_type=_text(form.get("identifier_type")))
        if missing:
            return self._error(404, missing)
        if problem := _identifier_type(form):
            return self._error(400, problem)
        if forbidden := self._forbidden_app(app_id):
            return forbidden
        ids, errors, total, missing = await _read_audience_file(form)
        if missing:
            return self._error(404, missing)
        # the page shows no response for a replace: 202 {"activity_id"} as for a create is inferred
        activity_id = self._new_job(
            "audiences", action="replace", app_id=app_id, name=audience["name"], list_id=list_id,
            ids=ids, errors=errors, total=total,
        )
        return JSONResponse({"activity_id": activity_id}, status_code=202)

    async def _rename_audience(self, request: Request) -> Response:
        denied = self._check(request, "audiences")
        if denied:
            return denied
        list_id = request.path_params["list_id"]
        # "Renaming an Audience List" (import-apis.html): PUT .../{id}/name?name=; without a name:
        # 404 "Parameter not found". Answering with the renamed list is ours (the page shows no response).
        name = (request.query_params.get("name") or "").strip()
        if not name:
            return self._error(404, "Missing required parameter(s): name.")
        with self.lock:
            self._settle_all()
            audience = self.audiences.get(list_id)
            if audience is None:
                return self._error(404, f"Unknown audience list {list_id}.")
            audience["name"] = name
            audience["updated_at"] = self._iso_now()
            return JSONResponse(self._list_view(list_id))

    async def _list_audiences(self, request: Request) -> Response:
        denied = self._check(request, "audiences")
        if denied:
            return denied
        app_id = request.path_params["app_id"]
        if forbidden := self._forbidden_app(app_id):
            return forbidden
        with self.lock:
            self._settle_all()
            lists = [self._list_view(i) for i, a in sorted(self.audiences.items()) if a["app_id"] == app_id]
            return JSONResponse(lists)

    def _list_view(self, list_id: int) -> dict[str, Any]:
        # the fields of "Retrieving Audience Lists by App" (import-apis.html, "Example Response")
        audience = self.audiences[list_id]
        return {k: audience[k] for k in ("id", "name", "app_id", "version", "record_count", "created_at", "updated_at")}

    def _apply_audience(self, job: dict[str, Any]) -> None:
        now = self._iso_now()
        audience = self.audiences.get(job["list_id"])
        if job["action"] == "create":
            audience = self.audiences[job["list_id"]] = {
                "id": job["list_id"], "name": job["name"], "app_id": job["app_id"], "version": 0,
                "created_at": now, "members": [],
            }
        elif audience is None:  # deleted while the replacement ran
            return
        audience["members"] = sorted(job["ids"])
        audience["record_count"] = len(job["ids"])
        audience["version"] += 1
        audience["updated_at"] = now

    # --- jobs ---------------------------------------------------------------------------------
    def _new_job(self, kind: str, **details: Any) -> str:
        activity_id = str(uuid.uuid4())
        with self.lock:
            self.jobs[activity_id] = {
                "kind": kind, "created": self.clock.now(), "created_at": self._iso_now(), "settled": False, **details
            }
        return activity_id

    def _status(self, job: dict[str, Any]) -> str:
        # "Either Pending, Running, Failed, or Completed" (import-apis.html, status "status" field)
        elapsed = self.clock.now() - job["created"]
        if elapsed < self.pending_seconds:
            return "Pending"
        if elapsed < self.pending_seconds + self.running_seconds:
            return "Running"
        imported = job["changes"] if job["kind"] == "profiles" else job["ids"]
        # when a job Fails the page does not say: failing only when no line could be imported is ours
        return "Completed" if imported else "Failed"

    def _settle(self, activity_id: str) -> None:
        """Apply a finished job's effect once (called lazily whenever state is observed)."""
        job = self.jobs[activity_id]
        if job["settled"]:
            return
        status = self._status(job)
        if status in ("Pending", "Running"):
            return
        job["settled"] = True
        job["finished_at"] = self._iso_now(job["created"] + self.pending_seconds + self.running_seconds)
        if status == "Completed":
            (self._apply_profiles if job["kind"] == "profiles" else self._apply_audience)(job)

    def _settle_all(self) -> None:
        for activity_id in self.jobs:
            self._settle(activity_id)

    def _public_job(self, activity_id: str, status: str | None = None) -> dict[str, Any]:
        job = self.jobs[activity_id]
        status = status or self._status(job)
        done = status in ("Completed", "Failed")
        failed = len(job["errors"])
        if job["kind"] == "profiles":
            # status, error_log, target and upload_statistics with these four counts (import-apis.html,
            # profile "Sample Response", which spells target "scopet"). While Pending/Running the sample
            # elides the rest, so they are null then; created_at/updated_at are extra (no source).
            succeeded = len(job["changes"])
            return {
                "status": status,
                "error_log": f"{self.url}{ERROR_LOG_PREFIX}/{activity_id}/errors.json" if done and self.url else None,
                "target": job["target"],
                "upload_statistics": {
                    "successful_imports": succeeded,
                    "parsed_imports": succeeded,
                    "failed_imports": failed,
                    "total_number_of_imports": job["total"],
                } if done else None,
                "created_at": job["created_at"],
                "updated_at": job.get("finished_at", job["created_at"]),
            }
        # the audience examples "with incomplete status" and "with complete status" (import-apis.html)
        view: dict[str, Any] = {
            "status": status,
            "error_reason": None,
            "upload_statistics": None,
            "app_uuid": job["app_id"],
            "created_at": job["created_at"],
            "updated_at": job.get("finished_at", job["created_at"]),
        }
        if status == "Failed":  # the wording of error_reason is ours: the page only shows it null
            view["error_reason"] = "No valid customer_id line in the file." if job["total"] else "The file is empty."
        if done:  # these five counts, as strings, as in "Example with complete status"
            view["upload_statistics"] = {
                "total_lines": str(job["total"]),
                "audience_id": str(job["list_id"]),
                "audience_list_id": str(job["list_id"]),
                "failed_lines": str(failed),
                "successful_lines": str(job["total"] - failed),
            }
        return view

    async def _error_log(self, request: Request) -> Response:
        activity_id = request.path_params["activity_id"]
        with self.lock:
            # Recorded so tests can prove no credential is sent to the (foreign) log host.
            self.error_log_fetches.append(
                {"activity_id": activity_id, "authorization": "authorization" in request.headers}
            )
            job = self.jobs.get(activity_id)
            if job is None or self._status(job) not in ("Completed", "Failed"):
                # S3's answer for a missing object; the page says nothing of a log before the job ends (ours)
                return Response("<Error><Code>NoSuchKey</Code></Error>", status_code=404, media_type="application/xml")
            body = "".join(json.dumps(e) + "\n" for e in job["errors"])
        return Response(body, media_type="application/json")

    def _iso_now(self, at: float | None = None) -> str:
        moment = self.clock.now() if at is None else at
        return dt.datetime.fromtimestamp(moment, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")

    async def _delete_profile(self, request: Request) -> Response:
        """Profile API DELETE (help.uplandsoftware.com/localytics/dev/profile-api.html): org-level
        ``/v1/profiles/{customer_id}`` or app-level ``/v1/apps/{app_id}/profiles/{customer_id}``; 404 when
        there is no profile, as its GET documents (v4docs.localytics.com/Dev/Profiles/get.html). The page
        gives no success code nor a rate limit for DELETE: 204 and no limit are this emulator's choice."""
        # the same key and secret as the imports (import-apis.html, "Authentication")
        if not self._authenticated(request):
            return JSONResponse({"error": "The provided authentication parameters were not valid."}, status_code=401)
        customer_id, app_id = request.path_params["customer_id"], request.path_params.get("app_id")
        if app_id is not None and app_id not in self.app_ids:  # 404 for an unknown app: inferred, as above
            return JSONResponse({"error": f"app {app_id} not found"}, status_code=404)
        scopes = [f"app_id:{app_id}"] if app_id is not None else [f"org_id:{org}" for org in self.org_ids]
        with self.lock:
            found = [scope for scope in scopes if customer_id in self.profiles.get(scope, {})]
            for scope in found:
                del self.profiles[scope][customer_id]
        if not found:
            return JSONResponse({"error": "Not Found"}, status_code=404)
        return Response(status_code=204)


# --- file validation (module level: pure functions of the uploaded bytes) -------------------------

def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _require(**fields: str) -> str | None:
    missing = [name for name, value in fields.items() if not value]
    return f"Missing required parameter(s): {', '.join(missing)}." if missing else None


def _identifier_type(form: Any) -> str | None:
    # "At this time, customer_id is the only accepted identifier" (import-apis.html); the code (400) is ours
    identifier_type = _text(form.get("identifier_type"))
    if identifier_type != "customer_id":
        return f"identifier_type must be customer_id, got {identifier_type!r}."
    return None


def _lines(content: bytes) -> list[tuple[int, str]]:
    # "the standard JSON lines text file format" (import-apis.html, "Import File Format"); blank lines
    # are skipped (lenient, no source)
    text = content.decode("utf-8-sig", errors="replace")
    # JSON lines end at "\n" only: a U+2028 inside a value is legal JSON and must not split the record
    return [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]


def _customer_id(value: Any) -> str | None:
    # every line has a customer_id (import-apis.html, both "Import File Format"s); the page shows strings,
    # integers are accepted too (lenient, no source)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value).strip()
    return text or None


def _check_scalar(value: Any) -> str | None:
    # "numeric integers or strings of 255 characters or less"; dates are such strings, "YYYY-MM-DD"
    # (v4docs.localytics.com/Marketing/Profiles/custom_profiles.html). The date form is not checked: a
    # string that is no date is still a valid string value.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return f"value must be a string or an integer, got {type(value).__name__}"
    if isinstance(value, str) and len(value) > MAX_STRING:
        return f"string value longer than {MAX_STRING} characters"
    return None


def _check_change(change: Any) -> str | None:
    # The change shape {"op", "attr", "value"} and the five ops: import-apis.html, "Import File Format".
    if not isinstance(change, dict):
        return "each change must be an object"
    op, attr = change.get("op"), change.get("attr")
    if op not in PROFILE_OPS:
        return f"unknown op {op!r}"
    if not isinstance(attr, str) or not attr:  # attr names the attribute (same example)
        return "attr must be a non-empty string"
    if op == "delete":
        return None  # the example's delete has no value; one sent anyway is ignored (lenient, no source)
    if "value" not in change:
        return f"{op} needs a value"
    value = change["value"]
    if op == "increment":
        # the example increments by 1, and numeric attributes are integers (custom_profiles.html above)
        return None if isinstance(value, int) and not isinstance(value, bool) else "increment value must be an integer"
    if op in ("set-add", "set-remove"):
        # the example's set ops take a list; its members are attribute values (the Profile API's example
        # has lists of strings and of integers: help.uplandsoftware.com/localytics/dev/profile-api.html).
        # An empty list is accepted (lenient, no source).
        if not isinstance(value, list):
            return f"{op} value must be a list"
        return next(filter(None, map(_check_scalar, value)), None)
    return _check_scalar(value)


def _parse_profile_file(content: bytes, file_format: str) -> tuple[list, list[dict], int]:
    """(accepted (customer_id, changes) pairs, error entries, total lines)."""
    accepted: list[tuple[str, list[dict]]] = []
    errors: list[dict] = []
    if file_format == "csv":
        # no public page gives the import's CSV layout: one customer_id column plus one column per
        # attribute, each cell an assign, follows the dashboard's CSV upload (inferred, lenient)
        rows = list(csv.DictReader(io.StringIO(content.decode("utf-8-sig", errors="replace"))))
        for number, row in enumerate(rows, start=2):
            customer_id = _customer_id(row.pop("customer_id", None))
            changes = [{"op": "assign", "attr": k, "value": v} for k, v in row.items() if k and v not in (None, "")]
            if customer_id is None:
                problem = "missing customer_id"
            else:
                problem = next(filter(None, map(_check_change, changes)), None)
            if problem:
                errors.append({"line": number, "customer_id": customer_id, "error": problem})
            else:
                accepted.append((customer_id, changes))
        return accepted, errors, len(rows)
    lines = _lines(content)
    for number, line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            errors.append({"line": number, "customer_id": None, "error": "invalid JSON"})
            continue
        if not isinstance(record, dict):
            errors.append({"line": number, "customer_id": None, "error": "line must be a JSON object"})
            continue
        # "a dictionary with two keys, customer_id and changes" (import-apis.html, "Import File Format");
        # an empty changes list is accepted (lenient, no source)
        customer_id = _customer_id(record.get("customer_id"))
        changes = record.get("changes")
        if customer_id is None:
            problem = "missing or invalid customer_id"
        elif not isinstance(changes, list):
            problem = "changes must be a list"
        else:
            problem = next(filter(None, map(_check_change, changes)), None)
        if problem:
            errors.append({"line": number, "customer_id": customer_id, "error": problem})
        else:
            accepted.append((customer_id, changes))
    return accepted, errors, len(lines)


async def _read_audience_file(form: Any) -> tuple[set[str], list[dict], int, str | None]:
    """(distinct valid customer ids, error entries, total lines, a request-level problem or None)."""
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        return set(), [], 0, "Missing required parameter(s): file."
    # each line "a dictionary with one key, customer_id" (import-apis.html, Audience Imports)
    ids: set[str] = set()
    errors: list[dict] = []
    lines = _lines(await upload.read())
    for number, line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        customer_id = _customer_id(record.get("customer_id")) if isinstance(record, dict) else None
        if customer_id is None:
            errors.append({"line": number, "error": "expected {\"customer_id\": ...}"})
        else:
            ids.add(customer_id)
    return ids, errors, len(lines), None


__all__ = ["LocalyticsEmulator"]
