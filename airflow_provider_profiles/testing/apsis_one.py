"""Apsis One emulator: OAuth tokens, audience lookups, profile imports and an S3-style presigned upload.

Vendor routes (the real paths; errors are RFC 7807 ``{"type","title","status","detail"}``):
- ``POST /oauth/token`` client credentials -> ``{"access_token","expires_in","token_type"}``;
  a request with an expired token gets 403 ``{"message": "...explicit deny"}``, one with an unknown
  or missing token 401;
- ``GET /audience/sections``, ``/audience/keyspaces``, ``/audience/sections/{s}/attributes``,
  ``/audience/sections/{s}/tags``, ``/audience/sections/{s}/consent-lists``,
  ``/v2/audience/sections/{s}/topics`` (also the older ``.../consent-lists/{list}/topics``)
  -> ``{"items": [...]}``;
- ``POST /v2/audience/sections/{s}/imports`` -> import id + presigned upload form (429 past
  ``max_concurrent_imports`` running imports);
- ``GET /audience/sections/{s}/imports/{id}`` (also under ``/v2``) -> ``{"import_id","result":{...}}``.

Sources of the rules enforced here (each rule's comment names one):
- AUTH: help.apsis.com/en/articles/6104974-authentication (bearer token; an invalid or expired token
  gets 403 "explicit deny"), developer.apsis.com/reference/authentication-1 (client credentials JSON
  body, ``expires_in``, tokens of up to 24 hours);
- IMPORTS: help.apsis.one/en/articles/6104984 (import specification, presigned upload, statuses,
  3 simultaneous imports) and developer.apsis.com/reference/post_v2-audience-sections-section-discriminator-imports-1
  (CSV only, at most 50 MB, 429 past the pending-import limit);
- CLIENT: github.com/ApsisInternational/module-one (Service/Api/ClientApi.php: the lookup routes, topics
  under ``/v2/audience/sections/{s}/topics``).
Where these say nothing the emulator is lenient, and says so.

The presigned upload is served here under ``/file-import-uploads`` (in production it is an S3 bucket
on another host). Like S3 it checks every issued form field, the policy signature and expiry, the
content type, the size range, and that ``file`` is the last part; its errors are S3 XML.

Import timeline (emulated seconds): ``queued`` for ``queued_seconds``, then ``waiting_for_file``
until the upload (or ``error`` once the upload URL expires), then ``in_progress`` for
``processing_seconds``, then ``completed`` or ``error`` (a mapped column missing from the file, an
unreadable file, or ``fail_imports=True``). Rows whose keyspace value is invalid count as failed.
Imported profiles are kept (up to ``max_stored_profiles``) so tests can check what arrived.
"""

from __future__ import annotations

import base64
import copy
import csv
import hashlib
import hmac
import io
import itertools
import json
import re
import secrets
import uuid
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airflow_provider_profiles.testing.base import Emulator, too_many_requests

UPLOAD_PATH = "/file-import-uploads"
EXPLICIT_DENY = "User is not authorized to access this resource with an explicit deny"
ACTIVE_STATUSES = ("queued", "waiting_for_file", "in_progress")
TRUTHY = {"1", "true", "yes", "y", "t"}
FALSY = {"0", "false", "no", "n", "f"}

DEFAULT_SECTION = "com.apsis1.sections.default"
DEFAULT_CATALOG: dict[str, Any] = {
    "keyspaces": [
        {"discriminator": "com.apsis1.keyspaces.email", "name": "Email"},
        {"discriminator": "com.apsis1.keyspaces.mobile", "name": "Mobile"},
        {"discriminator": "com.apsis1.keyspaces.crm", "name": "CRM id"},
    ],
    "channels": ["com.apsis1.channels.email", "com.apsis1.channels.sms"],
    "sections": {
        DEFAULT_SECTION: {
            "name": "Default",
            "attributes": [
                {
                    "discriminator": "com.apsis1.attributes.email",
                    "name": "Email",
                    "type": "string",
                    "versions": [{"version_id": "1001", "deprecated_at": None}],
                },
                {
                    "discriminator": "usercreated.attributes.first-name-k2j4",
                    "name": "First name",
                    "type": "string",
                    "versions": [
                        {"version_id": "2001", "deprecated_at": "2024-01-10T09:00:00.000Z"},
                        {"version_id": "2002", "deprecated_at": None},
                    ],
                },
                {
                    "discriminator": "usercreated.attributes.city-x81q",
                    "name": "City",
                    "type": "string",
                    "versions": [{"version_id": "3001", "deprecated_at": None}],
                },
                {
                    "discriminator": "usercreated.attributes.score-p0qa",
                    "name": "Score",
                    "type": "integer",
                    "versions": [{"version_id": "4001", "deprecated_at": None}],
                },
            ],
            "tags": [
                {"discriminator": "usercreated.tags.vip-npqjeo3mbb", "name": "VIP"},
                {"discriminator": "usercreated.tags.churn-risk-a7c2", "name": "Churn risk"},
            ],
            "consent_lists": [
                {
                    "discriminator": "usercreated.consentlists.newsletters-q1w2",
                    "name": "Newsletters",
                    "topics": [
                        {"discriminator": "usercreated.topics.shoes-bcjvwfknxd", "name": "Shoes"},
                        {"discriminator": "usercreated.topics.news-0k9d", "name": "News"},
                    ],
                }
            ],
        }
    },
}

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_MOBILE = re.compile(r"^\+?[0-9]{6,15}$")


def problem(status: int, title: str, detail: str, headers: dict | None = None) -> JSONResponse:
    """An RFC 7807 problem document, as the Apsis One API answers errors."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers, media_type="application/problem+json")


def s3_error(status: int, code: str, message: str) -> Response:
    """The XML error S3 answers a rejected presigned POST with."""
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return Response(body, status_code=status, media_type="application/xml")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def keyspace_value_error(keyspace: str, value: str) -> str | None:
    """Why a keyspace value is invalid, or None: email and mobile keyspaces check their format.

    The sources give no format rule: these loose patterns only fail values that cannot be an address
    or a number (lenient), and such a row counts as failed as the status's ``profiles_failed`` allows.
    """
    if not value.strip():
        return "empty keyspace value"
    if keyspace.endswith(".email") and not _EMAIL.match(value):
        return f"invalid email address {value!r}"
    if keyspace.endswith(".mobile") and not _MOBILE.match(value):
        return f"invalid mobile number {value!r}"
    return None


class ApsisOneEmulator(Emulator):
    name = "apsis_one"

    def __init__(
        self,
        *,
        client_id: str = "apsis-client",
        client_secret: str = "apsis-secret",
        token_ttl: float = 3600.0,
        queued_seconds: float = 0.2,
        processing_seconds: float = 0.5,
        upload_url_ttl: float = 3600.0,
        max_concurrent_imports: int = 3,
        max_file_bytes: int = 50 * 1000 * 1000,
        slot_retry_after: float = 1.0,
        fail_imports: bool = False,
        max_stored_profiles: int = 100_000,
        catalog: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.client_id, self.client_secret = client_id, client_secret
        self.token_ttl = token_ttl
        self.queued_seconds, self.processing_seconds = queued_seconds, processing_seconds
        self.upload_url_ttl = upload_url_ttl
        self.max_concurrent_imports = max_concurrent_imports
        self.max_file_bytes = max_file_bytes
        self.slot_retry_after = slot_retry_after
        self.fail_imports = fail_imports
        self.max_stored_profiles = max_stored_profiles
        self.catalog = copy.deepcopy(catalog or DEFAULT_CATALOG)
        self._signing_key = secrets.token_bytes(32)  # signs upload policies, as the bucket's secret would
        self._account = "48916"
        self._reset_state()

    def _reset_state(self) -> None:
        self.tokens: dict[str, float] = {}  # access token -> expiry (emulated epoch)
        self.tokens_issued = 0
        self.imports: dict[str, dict[str, Any]] = {}
        self.profiles: dict[str, dict[str, dict[str, Any]]] = {}  # section -> "keyspace:value" -> profile
        self.stored_profiles = 0
        self.rejected_creates = 0  # imports refused with 429 (slot limit)
        self.max_active_seen = 0
        self._seq = itertools.count(1)

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self._reset_state()

    def revoke_tokens(self) -> None:
        """Invalidate every issued token (as a credential rotation would): the next call gets 401."""
        with self.lock:
            self.tokens.clear()

    def routes(self) -> list[Route]:
        sections = "/audience/sections/{section}"
        imports = [
            Route(f"{prefix}{sections}/imports/{{import_id}}", self._get_import, methods=["GET"])
            for prefix in ("", "/v2")
        ]
        return [
            Route("/oauth/token", self._token, methods=["POST"]),
            Route("/audience/sections", self._sections, methods=["GET"]),
            Route("/audience/keyspaces", self._keyspaces, methods=["GET"]),
            Route(f"{sections}/attributes", self._attributes, methods=["GET"]),
            Route(f"{sections}/tags", self._tags, methods=["GET"]),
            Route(f"{sections}/consent-lists", self._consent_lists, methods=["GET"]),
            Route(f"/v2{sections}/topics", self._section_topics, methods=["GET"]),
            Route(f"{sections}/consent-lists/{{consent_list}}/topics", self._topics, methods=["GET"]),
            Route(f"/v2{sections}/imports", self._create_import, methods=["POST"]),
            *imports,
            Route(UPLOAD_PATH, self._upload, methods=["POST"]),
            Route("/audience/keyspaces/{keyspace}/profiles/{profile_key}", self._delete_profile, methods=["DELETE"]),
        ]

    # --- state views ------------------------------------------------------------------------------
    def active_imports(self) -> int:
        with self.lock:
            return sum(1 for imp in self.imports.values() if self._status(imp)[0] in ACTIVE_STATUSES)

    def _status(self, imp: dict[str, Any]) -> tuple[str, str | None]:
        now = self.clock.now()
        queued_until = imp["created"] + self.queued_seconds
        if imp["uploaded_at"] is None:
            if now >= imp["expires_at"]:
                return "error", "the upload URL expired before a file was uploaded"
            return ("queued" if now < queued_until else "waiting_for_file"), None
        if now < max(imp["uploaded_at"], queued_until) + self.processing_seconds:
            return "in_progress", None
        return imp["outcome"], imp["error"]

    def _view(self, imp: dict[str, Any]) -> dict[str, Any]:
        status, error = self._status(imp)
        result: dict[str, Any] = {"status": status}
        if status in ("completed", "error") and imp["uploaded_at"] is not None:
            result.update(
                profiles_found=imp["found"], profiles_processed=imp["processed"], profiles_failed=imp["failed"]
            )
        if error:
            result["error"] = {"title": "Import failed", "detail": error}
        return {"import_id": imp["import_id"], "result": result}

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "imports": {
                    iid: {**self._view(imp), "section": imp["section"], "spec": imp["spec"], "uploads": imp["uploads"]}
                    for iid, imp in self.imports.items()
                },
                "profiles": copy.deepcopy(self.profiles),
                "tokens_issued": self.tokens_issued,
                "rejected_creates": self.rejected_creates,
                "max_active_seen": self.max_active_seen,
            }

    def connection(self) -> dict[str, Any]:
        conn = super().connection()
        return {**conn, "login": self.client_id, "password": self.client_secret}

    def summary(self) -> dict[str, Any]:
        with self.lock:
            statuses: dict[str, int] = {}
            totals = {"profiles_found": 0, "profiles_processed": 0, "profiles_failed": 0}
            for imp in self.imports.values():
                result = self._view(imp)["result"]
                statuses[result["status"]] = statuses.get(result["status"], 0) + 1
                for key in totals:
                    totals[key] += result.get(key, 0)
            return {
                **super().summary(),
                "imports": statuses,
                **totals,
                "profiles_stored": sum(len(p) for p in self.profiles.values()),
                "imports_refused_429": self.rejected_creates,
            }

    # --- auth -------------------------------------------------------------------------------------
    async def _token(self, request: Request) -> Response:
        # AUTH: a JSON body with grant_type client_credentials, client_id, client_secret; a form body is
        # accepted too (lenient: the sources show JSON only)
        if "json" in request.headers.get("content-type", ""):
            try:
                body = await request.json()
            except ValueError:
                return problem(400, "Bad Request", "the body is not valid JSON")
        else:
            body = dict(await request.form())
        if body.get("grant_type") != "client_credentials":
            return problem(400, "Bad Request", "grant_type must be client_credentials")
        if body.get("client_id") != self.client_id or body.get("client_secret") != self.client_secret:
            return problem(401, "Unauthorized", "invalid client credentials")
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = self.clock.now() + self.token_ttl
            self.tokens_issued += 1
        return JSONResponse({"access_token": token, "token_type": "Bearer", "expires_in": int(self.token_ttl)})

    def _unauthorized(self, request: Request) -> Response | None:
        # AUTH: ``Authorization: Bearer <token>`` on every API route
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        with self.lock:
            expiry = self.tokens.get(token) if scheme.lower() == "bearer" else None
            if expiry is not None and expiry > self.clock.now():
                return None
        if expiry is not None:
            # AUTH (help.apsis.com/en/articles/6104974-authentication): an expired token is answered
            # 403 with this exact message, not 401
            return JSONResponse({"message": EXPLICIT_DENY}, status_code=403)
        # an unknown (revoked) or missing token: the sources do not say; 401 as RFC 6750 has it
        return problem(401, "Unauthorized", "access token revoked or unknown" if token else "missing bearer token")

    def _section(self, request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        denied = self._unauthorized(request)
        if denied:
            return None, denied
        name = request.path_params["section"]
        # a section that does not exist: 404 as an RFC 7807 problem (inferred; the sources list none)
        section = self.catalog["sections"].get(name)
        if section is None:
            return None, problem(404, "Not Found", f"section {name!r} does not exist")
        return section, None

    # --- lookups ----------------------------------------------------------------------------------
    async def _sections(self, request: Request) -> Response:
        denied = self._unauthorized(request)
        if denied:
            return denied
        items = [{"discriminator": d, "name": s["name"]} for d, s in self.catalog["sections"].items()]
        return JSONResponse({"items": items})

    async def _keyspaces(self, request: Request) -> Response:
        return self._unauthorized(request) or JSONResponse({"items": self.catalog["keyspaces"]})

    async def _attributes(self, request: Request) -> Response:
        section, error = self._section(request)
        return error or JSONResponse({"items": section["attributes"]})

    async def _tags(self, request: Request) -> Response:
        section, error = self._section(request)
        return error or JSONResponse({"items": section["tags"]})

    async def _consent_lists(self, request: Request) -> Response:
        section, error = self._section(request)
        if error:
            return error
        return JSONResponse({"items": [{k: v for k, v in cl.items() if k != "topics"} for cl in section["consent_lists"]]})

    async def _section_topics(self, request: Request) -> Response:
        # CLIENT: the current client reads a section's topics here (ClientApi.php getTopics); each item
        # names its consent list (item shape inferred: lenient, only the discriminator is relied on)
        section, error = self._section(request)
        if error:
            return error
        items = [{**topic, "consent_list_discriminator": consent_list["discriminator"]}
                 for consent_list in section["consent_lists"] for topic in consent_list["topics"]]
        return JSONResponse({"items": items})

    async def _topics(self, request: Request) -> Response:
        section, error = self._section(request)
        if error:
            return error
        for consent_list in section["consent_lists"]:
            if consent_list["discriminator"] == request.path_params["consent_list"]:
                return JSONResponse({"items": consent_list["topics"]})
        return problem(404, "Not Found", f"consent list {request.path_params['consent_list']!r} does not exist")

    # --- imports ----------------------------------------------------------------------------------
    def _spec_error(self, section: dict[str, Any], spec: Any) -> str | None:
        # IMPORTS: the specification's keyspace, attribute (non-deprecated version ids), tag and consent
        # mappings; keys the sources do not describe (folders, subscriptions) are accepted as they are
        if not isinstance(spec, dict):
            return "the import specification must be a JSON object"
        keyspace = spec.get("keyspace_mapping")
        if not isinstance(keyspace, dict) or not keyspace.get("field_selector"):
            return "keyspace_mapping with keyspace_discriminator and field_selector is required"
        if keyspace.get("keyspace_discriminator") not in {k["discriminator"] for k in self.catalog["keyspaces"]}:
            return f"unknown keyspace {keyspace.get('keyspace_discriminator')!r}"
        live_versions = {
            str(v["version_id"])
            for attribute in section["attributes"]
            for v in attribute["versions"]
            if not v.get("deprecated_at")
        }
        for mapping in spec.get("attribute_mappings") or []:
            if not mapping.get("field_selector"):
                return "every attribute mapping needs a field_selector"
            if str(mapping.get("attribute_version_id")) not in live_versions:
                return f"attribute_version_id {mapping.get('attribute_version_id')!r} is unknown or deprecated"
        tags = {t["discriminator"] for t in section["tags"]}
        for mapping in spec.get("tag_mappings") or []:
            if mapping.get("tag_discriminator") not in tags:
                return f"unknown tag {mapping.get('tag_discriminator')!r}"
        topics = {t["discriminator"] for cl in section["consent_lists"] for t in cl["topics"]}
        for mapping in spec.get("consent_mappings") or []:
            for consent in mapping.get("consents") or []:
                if consent.get("channel_discriminator") not in self.catalog["channels"]:
                    return f"unknown channel {consent.get('channel_discriminator')!r}"
                if consent.get("topic_discriminator") not in topics:
                    return f"unknown topic {consent.get('topic_discriminator')!r}"
                if consent.get("type") not in ("opt-in", "opt-out"):
                    return f"consent type must be opt-in or opt-out, not {consent.get('type')!r}"
                if not consent.get("field_selector"):
                    return "every consent needs a field_selector"
        return None

    async def _create_import(self, request: Request) -> Response:
        section, error = self._section(request)
        if error:
            return error
        try:
            spec = await request.json()
        except ValueError:
            return problem(400, "Bad Request", "the body is not valid JSON")
        invalid = self._spec_error(section, spec)
        if invalid:
            return problem(400, "Bad Request", invalid)
        with self.lock:
            # IMPORTS: "We allow three simultaneous imports per account", 429 past the pending-import limit
            if self.active_imports() >= self.max_concurrent_imports:
                self.rejected_creates += 1
                detail = f"at most {self.max_concurrent_imports} simultaneous imports are allowed per account"
                return too_many_requests(
                    self.slot_retry_after,
                    {"type": "about:blank", "title": "Too Many Requests", "status": 429, "detail": detail},
                )
            import_id = str(uuid.uuid4())
            now = self.clock.now()
            expires_at = now + self.upload_url_ttl
            fields = self._upload_fields(import_id, now, expires_at)
            self.imports[import_id] = {
                "import_id": import_id,
                "seq": next(self._seq),
                "section": request.path_params["section"],
                "spec": spec,
                "created": now,
                "expires_at": expires_at,
                "fields": fields,
                "uploaded_at": None,
                "uploads": 0,
                "outcome": None,
                "error": None,
                "found": 0,
                "processed": 0,
                "failed": 0,
            }
            self.max_active_seen = max(self.max_active_seen, self.active_imports())
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "import_id": import_id,
                "file_upload_url": f"{base}{UPLOAD_PATH}",
                "file_upload_body": fields,
                "file_upload_url_expires_at": _iso(expires_at),
            },
            status_code=201,
        )

    def _upload_fields(self, import_id: str, now: float, expires_at: float) -> dict[str, str]:
        # IMPORTS: the file_upload_body fields of the documented example; the policy conditions follow
        # S3's presigned POST (docs.aws.amazon.com/AmazonS3/latest/API/sigv4-HTTPPOSTConstructPolicy.html)
        key = f"{self._account}/{import_id}.csv"
        meta_id = base64.b64encode(secrets.token_bytes(18)).decode()
        date = datetime.fromtimestamp(now, tz=timezone.utc)
        conditions = [
            {"key": key},
            {"success_action_status": "200"},
            {"Content-Type": "text/csv"},
            {"X-Amz-Meta-Id": meta_id},
            ["content-length-range", 1, self.max_file_bytes],
        ]
        policy = base64.b64encode(json.dumps({"expiration": _iso(expires_at), "conditions": conditions}).encode()).decode()
        return {
            "key": key,
            "success_action_status": "200",
            "policy": policy,
            "content-type": "text/csv",
            "x-amz-meta-id": meta_id,
            "x-amz-algorithm": "AWS4-HMAC-SHA256",
            "x-amz-credential": f"AKIAEMULATOR/{date:%Y%m%d}/eu-west-1/s3/aws4_request",
            "x-amz-date": f"{date:%Y%m%dT%H%M%SZ}",
            "x-amz-signature": hmac.new(self._signing_key, policy.encode(), hashlib.sha256).hexdigest(),
        }

    async def _get_import(self, request: Request) -> Response:
        # IMPORTS: queued, waiting for a file, in progress, completed (found/processed/failed) or error
        _, error = self._section(request)
        if error:
            return error
        with self.lock:
            imp = self.imports.get(request.path_params["import_id"])
            if imp is None or imp["section"] != request.path_params["section"]:
                return problem(404, "Not Found", f"import {request.path_params['import_id']!r} does not exist")
            view = self._view(imp)
            if imp["uploaded_at"] is not None and view["result"]["status"] in ("completed", "error") \
                    and self.hold_end(imp["import_id"]):
                view = {"import_id": imp["import_id"], "result": {"status": "in_progress"}}
            return JSONResponse(view)

    # --- presigned upload -------------------------------------------------------------------------
    async def _upload(self, request: Request) -> Response:
        # IMPORTS: a multipart/form-data POST of every file_upload_body field, then ``file``; the checks
        # and XML errors are S3's (docs.aws.amazon.com/AmazonS3/latest/API/RESTObjectPOST.html); size
        # limit 50 MB (IMPORTS)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return s3_error(412, "PreconditionFailed", "Bucket POST must be of the enclosure-type multipart/form-data")
        form = await request.form(max_part_size=64 * 1024)
        try:
            return self._accept_upload(form)
        finally:
            await form.close()

    def _accept_upload(self, form: Any) -> Response:
        parts = form.multi_items()
        names = [name for name, _ in parts]
        if "file" not in names:
            return s3_error(400, "InvalidArgument", "POST requires exactly one file upload per request.")
        if names[-1] != "file":
            return s3_error(400, "InvalidArgument", "The file must be the last field of the form.")
        values = {name: value for name, value in parts if name != "file"}
        with self.lock:
            imp = next((i for i in self.imports.values() if i["fields"]["key"] == values.get("key")), None)
        if imp is None:
            return s3_error(403, "AccessDenied", "Invalid according to Policy: Policy Condition failed: key")
        issued = imp["fields"]
        missing = [name for name in issued if name not in values]
        if missing:
            return s3_error(403, "AccessDenied", f"Invalid according to Policy: missing field(s) {', '.join(missing)}")
        unexpected = [name for name in values if name not in issued]
        if unexpected:
            return s3_error(403, "AccessDenied", f"Invalid according to Policy: Extra input fields: {', '.join(unexpected)}")
        expected_signature = hmac.new(self._signing_key, values["policy"].encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected_signature, values["x-amz-signature"]):
            return s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided.")
        changed = [name for name in issued if values[name] != issued[name]]
        if changed:
            return s3_error(403, "AccessDenied", f"Invalid according to Policy: Policy Condition failed: {', '.join(changed)}")
        if values["content-type"] != "text/csv":
            return s3_error(403, "AccessDenied", "Invalid according to Policy: Policy Condition failed: Content-Type")
        if self.clock.now() >= imp["expires_at"]:
            return s3_error(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
        upload = form["file"]
        size = upload.size if upload.size is not None else len(upload.file.read())
        if size < 1 or size > self.max_file_bytes:
            return s3_error(400, "EntityTooLarge" if size else "EntityTooSmall", "Your proposed upload is outside the allowed size range.")
        upload.file.seek(0)
        with self.lock:
            imp["uploads"] += 1
            first = imp["uploaded_at"] is None and not imp.get("receiving")
            imp["receiving"] = True  # like S3, a repeated POST is accepted; Apsis processes the first
        if first:
            outcome = self._process(imp, upload.file)
            with self.lock:
                imp.update(outcome, uploaded_at=self.clock.now())
        status = int(issued.get("success_action_status") or 204)
        return Response(status_code=status if status in (200, 201, 204) else 204)

    def _process(self, imp: dict[str, Any], raw: Any) -> dict[str, Any]:
        """Parse the uploaded file (outside the lock: a big file must not stall status calls).

        Returns the outcome, revealed by the status once the processing time has passed.
        """
        spec = imp["spec"]
        counts = {"found": 0, "processed": 0, "failed": 0}
        try:
            rows = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
            header = rows.fieldnames or []
            required = [spec["keyspace_mapping"]["field_selector"]]
            required += [m["field_selector"] for m in spec.get("attribute_mappings") or []]
            required += [m["field_selector"] for m in spec.get("tag_mappings") or [] if m.get("field_selector")]
            required += [c["field_selector"] for m in spec.get("consent_mappings") or [] for c in m.get("consents") or []]
            missing = [name for name in required if name not in header]
            if missing:
                return {**counts, "outcome": "error", "error": f"column(s) {', '.join(missing)} not found in the file header"}
            versions = self._version_to_attribute(imp["section"])
            for row in rows:
                counts["found"] += 1
                counts["processed" if self._apply_row(imp["section"], spec, versions, row) else "failed"] += 1
        except (UnicodeDecodeError, csv.Error) as exc:
            return {**counts, "outcome": "error", "error": f"the file is not a readable UTF-8 CSV: {exc}"}
        if self.fail_imports:
            return {**counts, "outcome": "error", "error": "the import failed while processing (injected)"}
        return {**counts, "outcome": "completed", "error": None}

    def _apply_row(self, section: str, spec: dict[str, Any], versions: dict[str, str], row: dict[str, Any]) -> bool:
        keyspace = spec["keyspace_mapping"]["keyspace_discriminator"]
        value = (row.get(spec["keyspace_mapping"]["field_selector"]) or "").strip()
        if keyspace_value_error(keyspace, value):
            return False
        with self.lock:
            return self._store_row(section, spec, versions, f"{keyspace}:{value}", row)

    def _store_row(self, section: str, spec: dict[str, Any], versions: dict[str, str], profile_key: str,
                   row: dict[str, Any]) -> bool:
        options = spec.get("options") or {}
        store = self.profiles.setdefault(section, {})
        exists = profile_key in store
        if not exists and self.stored_profiles >= self.max_stored_profiles:
            return True  # counted, not kept: big loads must not exhaust the emulator's memory
        self.stored_profiles += not exists
        if exists and options.get("update_existing_profiles") is False:
            return True
        profile = store.setdefault(profile_key, {"attributes": {}, "tags": [], "consents": {}})
        for mapping in spec.get("attribute_mappings") or []:
            cell = row.get(mapping["field_selector"]) or ""
            attribute = versions[str(mapping["attribute_version_id"])]
            if cell != "":
                profile["attributes"][attribute] = cell
            elif options.get("clear_existing_attributes"):
                profile["attributes"].pop(attribute, None)
        for mapping in spec.get("tag_mappings") or []:
            cell = (row.get(mapping["field_selector"]) or "").strip().lower() if mapping.get("field_selector") else "true"
            tag = mapping["tag_discriminator"]
            if cell in TRUTHY and tag not in profile["tags"]:
                profile["tags"].append(tag)
            elif cell in FALSY and tag in profile["tags"]:
                profile["tags"].remove(tag)
        for mapping in spec.get("consent_mappings") or []:
            for consent in mapping.get("consents") or []:
                cell = (row.get(consent["field_selector"]) or "").strip().lower()
                if cell in TRUTHY:
                    profile["consents"][f"{consent['channel_discriminator']}|{consent['topic_discriminator']}"] = consent["type"]
        return True

    def _version_to_attribute(self, section: str) -> dict[str, str]:
        return {
            str(v["version_id"]): a["discriminator"]
            for a in self.catalog["sections"][section]["attributes"]
            for v in a["versions"]
        }

    async def _delete_profile(self, request: Request) -> Response:
        """Profile deletion, as the API client of github.com/ApsisInternational/module-one addresses
        profiles (``/audience/keyspaces/{keyspace}/profiles/{profile_key}``): the profile goes from every
        section. No public source gives the response codes: 204 when deleted and a 404 problem when
        there is no such profile are this emulator's assumption."""
        denied = self._unauthorized(request)
        if denied:
            return denied
        key = f"{request.path_params['keyspace']}:{request.path_params['profile_key']}"
        with self.lock:
            found = [section for section, store in self.profiles.items() if key in store]
            for section in found:
                del self.profiles[section][key]
            if found:
                self.stored_profiles -= 1
        if not found:
            return problem(404, "Not Found", f"no profile {request.path_params['profile_key']!r} in this keyspace")
        return Response(status_code=204)
