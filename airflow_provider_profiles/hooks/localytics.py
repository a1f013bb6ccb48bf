"""Localytics Profile Imports and Audience Imports.

Auth is HTTP Basic with the org API key (connection login) and secret (password), sent in the
``Authorization`` header, never in a URL. Rate limits per key, declared in ``rate_limits`` and
overridable with the connection extra ``rate_limits``: profile uploads 10 per hour, profile status
60 per minute, every audience route 60 per minute. A 429 on a profile upload can mean a wait of up
to an hour; ``upload_profiles`` waits for the slot (extra ``upload_max_wait``, seconds) instead of failing.

Remote jobs are ``{"kind": "profiles" | "audiences", "activity_id": ...}``; Localytics cannot cancel them.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from airflow.providers.common.compat.sdk import mask_secret

from airflow_provider_profiles.hooks.base import (
    Call,
    CapacityWait,
    JobState,
    JobStatus,
    ProfilesHook,
    VendorAPIError,
)
from airflow_provider_profiles.hooks.multipart import MultipartFileStream, streamable
from airflow_provider_profiles.storage import open_upload

PROFILES = "profiles"
AUDIENCES = "audiences"
KINDS = (PROFILES, AUDIENCES)
PROFILE_FORMATS = ("json", "csv")
FIRST_ERRORS = 5  # error-log lines carried in the status (and so in task logs and failure messages)
ERROR_LOG_MAX_BYTES = 64 * 1024  # read no more of an error log than this: its first lines are what we keep
ERROR_TEXT_MAX = 300  # characters of one error-log value kept
DEFAULT_UPLOAD_MAX_WAIT = 2 * 3600.0

_STATES = {"pending": JobState.RUNNING, "running": JobState.RUNNING, "completed": JobState.SUCCESS,
           "failed": JobState.FAILED}


class LocalyticsHook(ProfilesHook):
    """Talk to the Localytics import APIs (``api.localytics.com/v1``) through an Airflow connection.

    Connection: login = API key, password = API secret, extra ``org_id`` (default scope of profile
    imports), optional host or extra ``base_url`` (an emulator), ``rate_limits``, ``upload_max_wait``.
    """

    default_conn_name = "localytics_default"
    conn_type = "localytics"
    hook_name = "Localytics"
    default_base_urls = {"default": "https://api.localytics.com/v1"}
    default_region = "default"
    rate_limits = {"upload": (10, 3600), "status": (60, 60), "audiences": (60, 60)}

    # auth ---------------------------------------------------------------------------------------
    def auth(self) -> tuple[str, str]:
        conn = self.connection
        if not conn.login or not conn.password:
            raise ValueError(f"connection {self.conn_id!r}: set the Localytics API key as login and the "
                             "API secret as password")
        if not getattr(self, "_login_masked", False):
            mask_secret(conn.login)  # the key is half of the credential pair: keep it out of logs too
            self._login_masked = True
        return conn.login, conn.password

    def error_message(self, payload: Any, text: str) -> str:
        if isinstance(payload, dict):
            for key in ("error", "message", "error_message", "errors"):
                if payload.get(key):
                    return str(payload[key])
        return super().error_message(payload, text)

    def probe(self) -> str:
        # GET /v1/apps, the apps the API key and secret may query (Localytics Query API,
        # help.uplandsoftware.com/localytics/dev/query-api.html): the import APIs have no read without
        # an id. HAL JSON with the apps under "results" (a bare list is accepted too)
        body = self.probe_json("GET", "apps")
        apps = body.get("results") if isinstance(body, dict) else body
        if not isinstance(apps, list):
            raise self.unexpected_answer("GET", "apps", "not a list of apps")
        return f"{len(apps)} app(s) visible"

    # profile imports ------------------------------------------------------------------------------
    def upload_profiles(
        self,
        file: Any,
        *,
        org_id: str | int | None = None,
        app_id: str | None = None,
        format: str = "json",  # noqa: A002  (the vendor's parameter name)
        wait_for_slot: bool = True,
    ) -> str:
        """Upload a profile change file (JSON lines, or CSV) for one org or one app; return the activity id.

        Without ``org_id`` and ``app_id``, the connection extra ``org_id`` is the scope. With
        ``wait_for_slot=False`` a refusal for want of an upload slot raises ``VendorRateLimitError``
        (its ``retry_after`` says when to come back) instead of waiting here (a deferrable task
        waits in the triggerer instead).
        """
        scope = self.profile_scope(org_id=org_id, app_id=app_id)
        if format not in PROFILE_FORMATS:
            raise ValueError(f"format must be one of {', '.join(PROFILE_FORMATS)}, got {format!r}")
        content_type = "text/csv" if format == "csv" else "application/json"
        self.connection  # noqa: B018  (extras)
        slot = CapacityWait("profile upload slot (Localytics takes 10 per hour)",
                            self.policy.clock() + self.upload_max_wait() if wait_for_slot else None,
                            interval=60.0, min_interval=1.0)  # the answer's Retry-After tells when the hour moves on
        activity_id = self._send_file("POST", "imports/profiles/upload", file, content_type, route="upload",
                                      wait_for_capacity=slot, data={**scope, "format": format})
        self.log.info("Localytics profile import %s created for %s from %s", activity_id, scope, file)
        return activity_id

    def upload_max_wait(self) -> float:
        """Seconds an upload may wait for a slot (extra ``upload_max_wait``, default 2 hours)."""
        self.connection  # noqa: B018  (extras)
        return float(self.extras.get("upload_max_wait", DEFAULT_UPLOAD_MAX_WAIT))

    def upload_slot_free_in(self) -> float:
        """Seconds until this process's own limiter lets the next profile upload go (0: now)."""
        self.connection  # noqa: B018  (extras: rate_limits)
        limiter = self.limiter("upload")
        return limiter.free_in() if limiter else 0.0

    def _send_file(self, method: str, path: str, file: Any, content_type: str = "application/json",
                   **options: Any) -> str:
        """Send ``file`` as the form's ``file`` field, after the ``data`` fields; return the activity id of
        the 202 answer. A file is streamed (no size limit is documented: it grows with the table)."""
        with open_upload(file, "upload.json") as upload:
            if streamable(upload):
                fields = {name: str(value) for name, value in (options.pop("data", None) or {}).items()}
                body = MultipartFileStream(fields, upload, content_type)
                options["headers"] = {**options.get("headers", {}), "Content-Type": body.content_type}
                return _activity_id(self.request(method, path, data=body, **options))
            files = {"file": (upload.name, upload.body, content_type)}  # bytes or chunks: requests encodes them
            return _activity_id(self.request(method, path, files=files, **options))

    def profile_scope(self, *, org_id: str | int | None = None, app_id: str | None = None) -> dict[str, str]:
        """Exactly one of org_id / app_id (falling back to the connection's org_id)."""
        if org_id not in (None, "") and app_id not in (None, ""):
            raise ValueError("give org_id or app_id, not both: a profile import has one scope")
        if app_id not in (None, ""):
            return {"app_id": str(app_id)}
        if org_id in (None, ""):
            self.connection  # noqa: B018
            org_id = self.extras.get("org_id")
        if org_id in (None, ""):
            raise ValueError(f"no scope: pass org_id or app_id, or set extra org_id on connection {self.conn_id!r}")
        return {"org_id": str(org_id)}

    def profile_status_call(self, activity_id: str) -> Call:
        """The vendor's status body, with ``upload_statistics`` counts as integers."""
        return Call("GET", f"imports/profiles/status/{_segment(activity_id)}", _status_body, route="status")

    def get_profile_import_status(self, activity_id: str) -> dict[str, Any]:
        return self.call(self.profile_status_call(activity_id))

    def error_log_call(self, url: str, limit: int | None = FIRST_ERRORS) -> Call:
        """The first ``limit`` entries of a job's error log (all with ``limit=None``), as structured fields.

        The URL comes from the status answer: it is fetched only over https from a public host, or from
        the connection's own host or a ``trusted_hosts`` one, without credentials, and at most
        ``ERROR_LOG_MAX_BYTES`` of it are read.
        """
        return Call("GET", _absolute(url), lambda response: _error_entries(response.text, limit), supplied_url=True,
                    route="error_log", max_body_bytes=ERROR_LOG_MAX_BYTES)

    def get_error_log(self, url: str, limit: int | None = FIRST_ERRORS) -> list[Any]:
        return self.call(self.error_log_call(url, limit))

    # audience imports ---------------------------------------------------------------------------
    def create_audience(self, *, app_id: str, audience_name: str, file: Any) -> str:
        """Create an audience list from a file of ``{"customer_id": ...}`` lines; return the activity id."""
        _require(app_id=app_id, audience_name=audience_name)
        activity_id = self._send_file("POST", "imports/audiences/list/", file, route="audiences", data={
            "app_id": str(app_id), "audience_name": audience_name, "identifier_type": "customer_id"})
        self.log.info("Localytics audience %r import %s created in app %s", audience_name, activity_id, app_id)
        return activity_id

    def replace_audience(self, audience_list_id: str | int, *, app_id: str, file: Any) -> str:
        """Replace an audience list's members with a file's customer ids; return the activity id."""
        _require(audience_list_id=audience_list_id, app_id=app_id)
        activity_id = self._send_file("PUT", f"imports/audiences/list/{_segment(audience_list_id)}", file,
                                      route="audiences", data={"app_id": str(app_id), "identifier_type": "customer_id",
                                                               "audience_list_id": str(audience_list_id)})
        self.log.info("Localytics audience list %s replacement %s created", audience_list_id, activity_id)
        return activity_id

    def rename_audience(self, audience_list_id: str | int, name: str) -> dict[str, Any]:
        _require(audience_list_id=audience_list_id, name=name)
        return self.call(Call("PUT", f"imports/audiences/list/{_segment(audience_list_id)}/name", _json_or_empty,
                              route="audiences", params={"name": name}))

    def delete_audience(self, audience_list_id: str | int) -> dict[str, Any]:
        _require(audience_list_id=audience_list_id)
        return self.call(Call("DELETE", f"imports/audiences/list/{_segment(audience_list_id)}", _json_or_empty,
                              route="audiences"))

    def list_audiences(self, app_id: str) -> list[dict[str, Any]]:
        _require(app_id=app_id)
        response = self.request("GET", f"imports/audiences/list/app/{_segment(app_id)}", route="audiences")
        body = response.json()
        return body if isinstance(body, list) else list(body.get("audiences") or body.get("data") or [])

    def find_audience(self, app_id: str, name: str) -> dict[str, Any] | None:
        """The app's audience list called ``name`` (the most recently updated one if several)."""
        matches = [a for a in self.list_audiences(app_id) if a.get("name") == name]
        return max(matches, key=lambda a: str(a.get("updated_at") or ""), default=None)

    def audience_status_call(self, activity_id: str) -> Call:
        return Call("GET", f"imports/audiences/list/status/{_segment(activity_id)}", _status_body, route="audiences")

    def get_audience_import_status(self, activity_id: str) -> dict[str, Any]:
        return self.call(self.audience_status_call(activity_id))

    # job protocol ---------------------------------------------------------------------------------
    def job_status_call(self, *, kind: str, activity_id: str, **_: Any) -> Generator[Call, Any, JobStatus]:
        _check_kind(kind)
        if kind == AUDIENCES:
            return _job_status(kind, activity_id, (yield self.audience_status_call(activity_id)), [])
        body, errors = (yield self.profile_status_call(activity_id)), []
        if _wants_error_log(body):
            try:
                errors = yield self.error_log_call(body["error_log"])
            except VendorAPIError as error:  # the counts still tell the story; the log is a bonus
                self.log.warning("could not read the error log: %s", error)
                errors = [f"(error log unavailable: {error})"]
        return _job_status(kind, activity_id, body, errors)

    # --- erasure through the Profile API (help.uplandsoftware.com/localytics/dev/profile-api.html) --
    def profile_api_base_url(self) -> str:
        """The Profile API is on its own host: the extra ``profile_base_url``, else the import API's
        base with ``api.`` turned into ``profile.`` (api.localytics.com -> profile.localytics.com); any
        other host (an emulator, a proxy) is taken to serve both."""
        self.connection  # noqa: B018  (loads the connection and the base URL)
        if self.extras.get("profile_base_url"):
            return str(self.extras["profile_base_url"]).rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.hostname and parts.hostname.startswith("api."):
            return f"{parts.scheme}://profile.{parts.netloc[len('api.'):]}{parts.path}".rstrip("/")
        return self.base_url

    def api_base_urls(self) -> list[str]:
        return [self.base_url, self.profile_api_base_url()]

    def delete_profile(self, customer_id: str, app_id: str | None = None) -> bool:
        """Delete one customer's profile (GDPR erasure): org-level ``DELETE /v1/profiles/{customer_id}``,
        app-level ``/v1/apps/{app_id}/profiles/{customer_id}`` when ``app_id`` is given. True when
        deleted, False when there is no such profile (404). Rate-limited as the route class
        ``profile_api`` (no documented limit: set one with the connection extra ``rate_limits``)."""
        scope = f"apps/{_segment(app_id)}/" if app_id else ""
        url = f"{self.profile_api_base_url()}/{scope}profiles/{_segment(customer_id)}"
        return self.delete_if_exists(url, route="profile_api")


# --- helpers ----------------------------------------------------------------------------------------


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _require(**values: Any) -> None:
    missing = [name for name, value in values.items() if value in (None, "")]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")


def _segment(value: Any) -> str:
    return quote(str(value), safe="")


def _activity_id(response: Any) -> str:
    body = _json_or_empty(response)
    activity_id = body.get("activity_id") if isinstance(body, dict) else None
    if not activity_id:
        raise VendorAPIError(f"no activity_id in the response: {str(body)[:200]}", status=response.status_code,
                             vendor="Localytics")
    return str(activity_id)


def _json_or_empty(response: Any) -> Any:
    """The JSON body; {} for an empty one (a body that is not JSON raises ``VendorResponseError``)."""
    return response.json() if response.content.strip() else {}


def _to_int(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _status_body(response: Any) -> dict[str, Any]:
    return _normalized(response.json())


def _normalized(body: Any) -> dict[str, Any]:
    """The status body with numeric-string counts (the audience API sends strings) as integers."""
    body = dict(body) if isinstance(body, Mapping) else {"status": None, "raw": body}
    stats = body.get("upload_statistics")
    if isinstance(stats, Mapping):
        body["upload_statistics"] = {key: _to_int(value) for key, value in stats.items()}
    return body


def _wants_error_log(body: Mapping[str, Any]) -> bool:
    stats = body.get("upload_statistics") or {}
    failed = stats.get("failed_imports") or 0
    status = str(body.get("status") or "").lower()
    return bool(body.get("error_log")) and (status == "failed" or (status == "completed" and failed))


def _absolute(url: str) -> str:
    """The vendor's examples give the error log without a scheme (``bucket.s3.aws.com/errors/...``)."""
    return url if "://" in url else f"https://{url.lstrip('/')}"


def _error_entries(text: str, limit: int | None) -> list[Any]:
    """Error log entries (a JSON array or JSON lines) reduced to their structured fields: the scalar
    values of each object, texts cut at ``ERROR_TEXT_MAX``. A line that is not a JSON object is not
    carried (it could be any page the URL served); a note of its size stands in for it."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
            if isinstance(parsed, list):
                return [_structured(entry) for entry in (parsed if limit is None else parsed[:limit])]
        except ValueError:
            pass
    entries = []
    for line in stripped.splitlines():
        if not line.strip():
            continue
        try:
            entries.append(_structured(json.loads(line)))
        except ValueError:
            entries.append(_structured(line))
        if limit is not None and len(entries) >= limit:
            break
    return entries


def _structured(entry: Any) -> Any:
    if isinstance(entry, dict):
        return {str(key)[:100]: _cut(value) for key, value in entry.items()
                if value is None or isinstance(value, (str, int, float, bool))}
    return f"(an error-log line that is not a JSON object, {len(str(entry))} characters)"


def _cut(value: Any) -> Any:
    return value[:ERROR_TEXT_MAX] if isinstance(value, str) else value


def statistics(kind: str, body: Mapping[str, Any]) -> dict[str, int | None]:
    """The vendor's counts in one shape for both kinds: total, succeeded, failed."""
    stats = body.get("upload_statistics") or {}
    if kind == PROFILES:
        names = ("total_number_of_imports", "successful_imports", "failed_imports")
    else:
        names = ("total_lines", "successful_lines", "failed_lines")
    total, succeeded, failed = (_to_int(stats.get(name)) for name in names)
    return {"total": total, "succeeded": succeeded, "failed": failed}


def _job_status(kind: str, activity_id: str, body: dict[str, Any], errors: list[Any]) -> JobStatus:
    vendor_status = str(body.get("status") or "unknown")
    state = _STATES.get(vendor_status.lower(), JobState.RUNNING)  # unknown statuses: keep polling
    payload: dict[str, Any] = {
        "kind": kind,
        "activity_id": activity_id,
        "status": vendor_status,
        "statistics": statistics(kind, body),
        "upload_statistics": body.get("upload_statistics"),
    }
    if kind == AUDIENCES:
        stats = body.get("upload_statistics") or {}
        payload["audience_list_id"] = _to_int(stats.get("audience_list_id"))
        payload["error_reason"] = body.get("error_reason")
    if body.get("error_log"):
        # only the path: a presigned object-store URL carries a signature in its query
        parts = urlsplit(_absolute(str(body["error_log"])))
        payload["error_log"] = f"{parts.scheme}://{parts.netloc}{parts.path}"
    if errors:
        payload["first_errors"] = errors
    message = None
    if state is JobState.FAILED:
        reason = body.get("error_reason") or "no reason given"
        message = f"{kind} import {activity_id} Failed: {reason}"
        if errors:
            message += "; first errors: " + " | ".join(_short(e) for e in errors)
    return JobStatus(state, vendor_status, payload, message)


def _short(entry: Any) -> str:
    text = entry if isinstance(entry, str) else json.dumps(entry, ensure_ascii=False)
    return text if len(text) <= 300 else text[:297] + "..."


__all__ = ["AUDIENCES", "KINDS", "PROFILES", "LocalyticsHook", "statistics"]

