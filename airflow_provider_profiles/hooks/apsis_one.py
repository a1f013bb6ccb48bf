"""Apsis One: OAuth2 client credentials, audience lookups, profile imports with a presigned file upload.

An import is two steps: ``create_profile_import`` sends the import specification and gets an upload
ticket (a presigned S3-style POST form), then ``upload_import_file`` posts the CSV to that form.
``job_status`` maps the import's status to the shared ``JobStatus`` (``error`` is a failure).
Apsis has no API to cancel an import.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import hashlib
import io
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Generator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import mask_secret

from airflow_provider_profiles.writers.apsis_one import KEYSPACES
from airflow_provider_profiles.hooks.base import (
    Call,
    CapacityWait,
    JobState,
    JobStatus,
    ProfilesHook,
)
from airflow_provider_profiles.hooks.multipart import MultipartFileStream as SharedMultipartFileStream, streamable
from airflow_provider_profiles.storage import Upload, open_upload
from airflow_provider_profiles.vendors import VENDORS

MAX_FILE_BYTES: int = VENDORS["apsis_one"].upload_limit  # type: ignore[assignment]  # 50 MB, a hard limit
CHANNELS = {"email": "com.apsis1.channels.email", "sms": "com.apsis1.channels.sms"}


class ImportSpecError(ValueError):
    """The import specification or the file does not fit; raised before any request is sent."""


class FileTooLargeError(ImportSpecError):
    """The file is over Apsis One's 50 MB import limit."""


# --- the import specification --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ConsentMapping:
    """A column whose truthy cells give (``opt-in``) or withdraw (``opt-out``) consent to a topic.

    ``channel`` is ``email``/``sms`` or a channel discriminator; ``address_field`` names the column
    with the address when it is not the keyspace column.
    """

    column: str
    topic: str
    channel: str = "email"
    type: str = "opt-in"
    resubscribe_if_opted_out: bool = False
    address_field: str | None = None

    def __post_init__(self):
        if self.type not in ("opt-in", "opt-out"):
            raise ImportSpecError(f"consent for column {self.column!r}: type must be 'opt-in' or 'opt-out', not {self.type!r}")
        if not self.column or not self.topic:
            raise ImportSpecError("a consent mapping needs a column and a topic discriminator")

    @property
    def channel_discriminator(self) -> str:
        return CHANNELS.get(self.channel, self.channel)

    def to_api(self) -> dict[str, Any]:
        return {
            "field_selector": self.column,
            "channel_discriminator": self.channel_discriminator,
            "topic_discriminator": self.topic,
            "type": self.type,
            "resubscribe_if_opted_out": self.resubscribe_if_opted_out,
        }


@dataclasses.dataclass(frozen=True)
class ImportSpec:
    """An Apsis One import specification built from plain arguments.

    - ``keyspace``: ``email``, ``mobile`` or a keyspace discriminator; ``keyspace_column``: its column.
    - ``attributes``: column -> attribute (name, discriminator, or ``{"attribute_version_id": ..}``);
      names and discriminators are resolved to the current, non-deprecated version by the hook.
    - ``tags``: column -> tag (name or discriminator), set where the cell is true, removed where false;
      ``static_tags``: tags given to every imported profile.
    - ``consents``: ``ConsentMapping`` objects or dicts of their fields.
    - ``extra``: further top-level spec keys sent as they are (folders, subscriptions) where the API
      takes them.
    """

    keyspace: str
    keyspace_column: str
    attributes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    static_tags: Sequence[str] = ()
    consents: Sequence[ConsentMapping | Mapping[str, Any]] = ()
    merge_profiles: bool | None = None
    update_existing_profiles: bool = True
    clear_existing_attributes: bool = False
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.keyspace or not self.keyspace_column:
            raise ImportSpecError("an import needs a keyspace and the column holding its values")
        consents = tuple(c if isinstance(c, ConsentMapping) else ConsentMapping(**c) for c in self.consents)
        object.__setattr__(self, "consents", consents)
        for column, attribute in self.attributes.items():
            if not column or not attribute:
                raise ImportSpecError(f"attribute mapping {column!r} -> {attribute!r}: both sides are required")

    @property
    def keyspace_discriminator(self) -> str:
        return KEYSPACES.get(self.keyspace, self.keyspace)

    def columns(self) -> dict[str, str]:
        """Every column the spec reads -> what maps it (for error messages), keyspace first."""
        used = {self.keyspace_column: "keyspace"}
        used.update({c: f"attribute {a!r}" for c, a in self.attributes.items()})
        used.update({c: f"tag {t!r}" for c, t in self.tags.items()})
        for consent in self.consents:
            used.setdefault(consent.column, f"consent topic {consent.topic!r}")
            if consent.address_field:
                used.setdefault(consent.address_field, "consent address")
        return used

    def check_header(self, header: Sequence[str], source: str = "the file") -> None:
        """Raise ``ImportSpecError`` naming the file, line 1 and the column, for a header that does not fit."""
        seen: dict[str, int] = {}
        for position, name in enumerate(header, start=1):
            if name in seen:
                raise ImportSpecError(f"{source}: line 1, column {position}: duplicate column {name!r} "
                                      f"(also column {seen[name]})")
            seen[name] = position
        missing = [f"{column!r} ({role})" for column, role in self.columns().items() if column not in seen]
        if missing:
            raise ImportSpecError(f"{source}: line 1: mapped column(s) not in the header: {', '.join(missing)}; "
                                  f"the header has {', '.join(map(repr, header)) or 'no columns'}")

    def to_api(self, attribute_versions: Mapping[str, str], tag_discriminators: Mapping[str, str]) -> dict[str, Any]:
        """The JSON body, given resolved attribute version ids and tag discriminators (keyed by column/name)."""
        keyspace_mapping: dict[str, Any] = {
            "keyspace_discriminator": self.keyspace_discriminator,
            "field_selector": self.keyspace_column,
        }
        if self.merge_profiles is not None:
            keyspace_mapping["merge_profiles"] = self.merge_profiles
        body: dict[str, Any] = {
            "keyspace_mapping": keyspace_mapping,
            "options": {
                "update_existing_profiles": self.update_existing_profiles,
                "clear_existing_attributes": self.clear_existing_attributes,
            },
        }
        if self.attributes:
            body["attribute_mappings"] = [
                {"field_selector": column, "attribute_version_id": attribute_versions[column]}
                for column in self.attributes
            ]
        tag_mappings = [{"field_selector": c, "tag_discriminator": tag_discriminators[t]} for c, t in self.tags.items()]
        tag_mappings += [{"tag_discriminator": tag_discriminators[t]} for t in self.static_tags]
        if tag_mappings:
            body["tag_mappings"] = tag_mappings
        if self.consents:
            groups: dict[str | None, list[dict[str, Any]]] = {}
            for consent in self.consents:
                groups.setdefault(consent.address_field, []).append(consent.to_api())
            body["consent_mappings"] = [
                {**({"address_field_selector": address} if address else {}), "consents": consents}
                for address, consents in groups.items()
            ]
        body.update(self.extra)
        return body


# --- files ----------------------------------------------------------------------------------------
def read_header(path: Any) -> list[str]:
    """The CSV header of a file, reading only its first line."""
    with path.open("rb") as handle:
        # read() and cut, not readline(limit): an object store's file (fsspec) takes no limit
        start = handle.read(1024 * 1024)
    first = start[: start.find(b"\n") + 1] if b"\n" in start else start
    text = first.decode("utf-8-sig", errors="replace")
    return next(csv.reader(io.StringIO(text)), [])


def check_import_file(path: Any, spec: ImportSpec) -> int:
    """Refuse a file over 50 MB or whose header lacks a mapped column; return its size in bytes."""
    size = int(path.stat().st_size)
    if size > MAX_FILE_BYTES:
        raise FileTooLargeError(
            f"{path}: {size / 1e6:.1f} MB is over Apsis One's 50 MB import limit; split it first "
            "(the split step of this provider writes chunks under the limit) and import each chunk"
        )
    if size == 0:
        raise ImportSpecError(f"{path}: line 1: the file is empty; it needs at least a header")
    spec.check_header(read_header(path), source=str(path))
    return size


class MultipartFileStream(SharedMultipartFileStream):
    """The presigned form's body, streamed (``hooks.multipart``); refuses what it cannot stream."""

    def __init__(self, fields: Mapping[str, str], upload: Upload, content_type: str = "text/csv"):
        if not streamable(upload):
            raise ImportSpecError(f"{upload.label}: an Apsis One upload needs a file (a path, a URL or an open "
                                  "binary file), to send its length and resend it whole")
        super().__init__(fields, upload, content_type)


def _parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _items(payload: Any) -> list[dict[str, Any]]:
    """List endpoints answer ``{"items": [...]}``; accept a bare list too."""
    if isinstance(payload, list):
        return payload
    return list((payload or {}).get("items") or [])


# --- one token per connection per process ------------------------------------------------------------
class _SharedTokens:
    """Access tokens shared by every hook of this process (operators, pokes, the triggers of a triggerer).

    Tokens last about 24 hours and the token endpoint is rate limited more strictly than the API, so
    Apsis asks clients to cache and reuse them (developer.apsis.com/reference/authentication-1).
    Keyed by connection, base URL, client id and a hash of the secret.
    """

    def __init__(self):
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, ...], threading.Lock] = {}
        self._alocks: dict[tuple[Any, ...], asyncio.Lock] = {}

    def fresh(self, key: tuple[str, ...]) -> str | None:
        with self._guard:
            token, expires = self._tokens.get(key, (None, 0.0))
        return token if token is not None and time.monotonic() < expires else None

    def keep(self, key: tuple[str, ...], token: str, expires: float) -> None:
        with self._guard:
            self._tokens[key] = (token, expires)

    def drop(self, key: tuple[str, ...], token: str | None) -> None:
        """Forget the token a request was refused with (not one another hook has fetched since)."""
        with self._guard:
            if token is None or self._tokens.get(key, (None,))[0] == token:
                self._tokens.pop(key, None)

    def lock(self, key: tuple[str, ...]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def alock(self, key: tuple[str, ...]) -> asyncio.Lock:
        loop = asyncio.get_running_loop()  # an asyncio.Lock belongs to one event loop
        with self._guard:
            for stale in [k for k in self._alocks if k[0].is_closed()]:
                del self._alocks[stale]
            return self._alocks.setdefault((loop, *key), asyncio.Lock())


_TOKENS = _SharedTokens()


# --- the hook ---------------------------------------------------------------------------------------
class ApsisOneHook(ProfilesHook):
    """Apsis One API: client id (login) and secret (password); region ``eu``/``apac`` or a host."""

    conn_name_attr = "apsis_one_conn_id"
    default_conn_name = "apsis_one_default"
    conn_type = "apsis_one"
    hook_name = "Apsis One"
    default_base_urls = {"eu": "https://api.apsis.one", "apac": "https://api-apac.apsis.one"}
    region_extra = "region"
    default_region = "eu"
    # refresh this long before the token expires, so no request leaves with a token about to lapse
    token_refresh_margin = 60.0
    # between attempts to create an import while 3 are running (connection extra ``slot_wait_interval``)
    slot_wait_interval = 15.0

    def __init__(self, apsis_one_conn_id: str | None = None, **kwargs: Any):
        super().__init__(apsis_one_conn_id, **kwargs)
        self._token: str | None = None  # the token this hook last sent

    # auth --------------------------------------------------------------------------------------
    def _token_call(self) -> Call:
        conn = self.connection
        if not conn.login or not conn.password:
            raise ValueError(f"connection {self.conn_id!r}: set the client id as login and the client secret as password")
        body = {"grant_type": "client_credentials", "client_id": conn.login, "client_secret": conn.password}
        return Call("POST", "/oauth/token", lambda response: self._keep_token(response.json()), json=body,
                    authenticate=False, idempotent=True, route="token")

    def _token_key(self) -> tuple[str, ...]:
        conn = self.connection
        secret = hashlib.sha256((conn.password or "").encode()).hexdigest()  # rotated secret: new token
        return (self.conn_id, self.base_url, conn.login or "", secret)

    def _keep_token(self, payload: Any) -> str:
        token = (payload or {}).get("access_token")
        if not token:
            raise ValueError("the Apsis One token endpoint answered without an access_token")
        mask_secret(token)
        ttl = float(payload.get("expires_in") or 3600)
        margin = min(self.token_refresh_margin, ttl / 10)
        _TOKENS.keep(self._token_key(), token, time.monotonic() + ttl - margin)
        return token

    def access_token(self) -> str:
        """A valid bearer token: the one this process shares for the connection, or a new one."""
        key = self._token_key()
        token = _TOKENS.fresh(key)
        if token is None:
            with _TOKENS.lock(key):
                token = _TOKENS.fresh(key) or self.call(self._token_call())
        self._token = token
        return token

    async def aaccess_token(self) -> str:
        await self.aconnection()
        key = self._token_key()
        token = _TOKENS.fresh(key)
        if token is None:
            async with _TOKENS.alock(key):  # the triggers of one triggerer wait for one fetch
                token = _TOKENS.fresh(key) or await self.acall(self._token_call())
        self._token = token
        return token

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token()}"}

    async def aauth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.aaccess_token()}"}

    def on_unauthorized(self) -> bool:
        # Refused (401, or 403 "explicit deny" for an invalid or expired token): drop the shared token
        # and fetch a new one, once, as Apsis's own client does on 401 and 403
        # (github.com/ApsisInternational/module-one, Service/Api/AbstractRestApi.php).
        _TOKENS.drop(self._token_key(), self._token)
        return True

    def error_message(self, payload: Any, text: str) -> str:
        if isinstance(payload, dict) and (payload.get("title") or payload.get("detail")):
            return ": ".join(str(payload[k]) for k in ("title", "detail") if payload.get(k))
        if text.lstrip().startswith("<"):  # the upload bucket answers S3 XML errors
            try:
                root = ET.fromstring(text)
                return ": ".join(filter(None, (root.findtext("Code"), root.findtext("Message"))))
            except ET.ParseError:
                pass
        return super().error_message(payload, text)

    def get_conn(self) -> Any:
        return self.session

    def probe(self) -> str:
        # a new token (POST /oauth/token, developer.apsis.com/reference/authentication-1) tests the
        # client id and secret, not a cached token; then the cheapest lookup, GET /audience/sections
        # (github.com/ApsisInternational/module-one, Service/Api/ClientApi.php)
        _TOKENS.drop(self._token_key(), None)
        self._token_call()  # missing credentials: a settings error, said as such
        try:
            self.access_token()
        except (ValueError, TypeError, AttributeError):  # a 2xx answer that holds no usable token
            raise self.unexpected_answer("POST", "/oauth/token", "not a token") from None
        body = self.probe_json("GET", "/audience/sections")
        if not isinstance(body, list) and not (isinstance(body, dict) and isinstance(body.get("items"), list)):
            raise self.unexpected_answer("GET", "/audience/sections", "not a list of sections")
        return f"{len(_items(body))} section(s) visible"

    # lookups -------------------------------------------------------------------------------------
    def _get_items(self, path: str) -> list[dict[str, Any]]:
        return _items(self.request("GET", path).json())

    def list_sections(self) -> list[dict[str, Any]]:
        return self._get_items("/audience/sections")

    def list_keyspaces(self) -> list[dict[str, Any]]:
        return self._get_items("/audience/keyspaces")

    def list_attributes(self, section: str) -> list[dict[str, Any]]:
        return self._get_items(f"/audience/sections/{section}/attributes")

    def list_tags(self, section: str) -> list[dict[str, Any]]:
        return self._get_items(f"/audience/sections/{section}/tags")

    def list_consent_lists(self, section: str) -> list[dict[str, Any]]:
        return self._get_items(f"/audience/sections/{section}/consent-lists")

    def list_topics(self, section: str, consent_list: str | None = None) -> list[dict[str, Any]]:
        """The section's topics (the route Apsis's current client reads: github.com/ApsisInternational/
        module-one, Service/Api/ClientApi.php ``getTopics``); with ``consent_list``, only that list's
        topics where the items name their list."""
        topics = self._get_items(f"/v2/audience/sections/{section}/topics")
        if consent_list is None:
            return topics
        return [t for t in topics if t.get("consent_list_discriminator") in (None, consent_list)]

    @staticmethod
    def current_version_id(attribute: Mapping[str, Any]) -> str | None:
        """The id of the attribute's non-deprecated version (the newest if several), or None."""
        live = [v for v in attribute.get("versions") or [] if not v.get("deprecated_at")]
        if not live:
            return None
        version = live[-1]
        return str(version.get("version_id", version.get("id")))

    def resolve_attribute_versions(self, section: str, wanted: Mapping[str, Any]) -> dict[str, str]:
        """column -> attribute_version_id for a column -> attribute (name or discriminator) mapping."""
        resolved: dict[str, str] = {}
        pending = {c: a for c, a in wanted.items() if not isinstance(a, Mapping)}
        for column, attribute in wanted.items():
            if isinstance(attribute, Mapping):
                resolved[column] = str(attribute["attribute_version_id"])
        if not pending:
            return resolved
        attributes = self.list_attributes(section)
        by_key: dict[str, list[Mapping[str, Any]]] = {}
        for attribute in attributes:
            by_key.setdefault(attribute.get("discriminator", ""), []).append(attribute)
            by_key.setdefault(str(attribute.get("name", "")).casefold(), []).append(attribute)
        for column, name in pending.items():
            matches = by_key.get(name) or by_key.get(str(name).casefold()) or []
            if not matches:
                known = ", ".join(sorted(str(a.get("name")) for a in attributes))
                raise ImportSpecError(f"column {column!r}: no attribute {name!r} in section {section!r}; known: {known}")
            if len({id(m) for m in matches}) > 1:
                raise ImportSpecError(f"column {column!r}: attribute name {name!r} is ambiguous in section "
                                      f"{section!r}; use its discriminator")
            version = self.current_version_id(matches[0])
            if version is None:
                raise ImportSpecError(f"column {column!r}: attribute {name!r} has only deprecated versions")
            resolved[column] = version
        return resolved

    def resolve_tags(self, section: str, wanted: Iterable[str]) -> dict[str, str]:
        """tag (name or discriminator) -> discriminator."""
        wanted = list(dict.fromkeys(wanted))
        if not wanted:
            return {}
        tags = self.list_tags(section)
        lookup = {t.get("discriminator"): t["discriminator"] for t in tags}
        lookup.update({str(t.get("name", "")).casefold(): t["discriminator"] for t in tags})
        resolved = {}
        for tag in wanted:
            discriminator = lookup.get(tag) or lookup.get(tag.casefold())
            if discriminator is None:
                raise ImportSpecError(f"no tag {tag!r} in section {section!r}")
            resolved[tag] = discriminator
        return resolved

    def build_import_body(self, section: str, spec: ImportSpec) -> dict[str, Any]:
        """The import request body, with attribute and tag names resolved through the lookups."""
        versions = self.resolve_attribute_versions(section, spec.attributes)
        tags = self.resolve_tags(section, [*spec.tags.values(), *spec.static_tags])
        return spec.to_api(versions, tags)

    # imports -------------------------------------------------------------------------------------
    def create_profile_import(self, section: str, spec: ImportSpec | Mapping[str, Any], *,
                              wait_for_slot_until: float | None = None) -> dict[str, Any]:
        """Create an import; return ``{import_id, file_upload_url, file_upload_body, file_upload_url_expires_at}``.

        Apsis runs at most 3 imports per account and answers 429 past that. The shared retry policy
        already waits out a few 429s; beyond them, keep trying every ``slot_wait_interval`` until
        ``wait_for_slot_until`` (epoch seconds; None: do not wait beyond the policy).
        """
        body = self.build_import_body(section, spec) if isinstance(spec, ImportSpec) else dict(spec)
        self.connection  # noqa: B018  (extras)
        slot = CapacityWait("free import slot (Apsis One runs 3 per account)", wait_for_slot_until,
                            float(self.extras.get("slot_wait_interval", self.slot_wait_interval)))
        response = self.request("POST", f"/v2/audience/sections/{section}/imports", json=body, route="imports",
                                wait_for_capacity=slot)
        ticket = response.json()
        fields = ticket.get("file_upload_body") or {}
        for secret in (fields.get("x-amz-signature"), fields.get("policy")):  # they grant the upload
            if secret:
                mask_secret(secret)
        self.log.info("Created Apsis One import %s in section %s", ticket.get("import_id"), section)
        return ticket

    def upload_import_file(self, ticket: Mapping[str, Any], file: Any) -> None:
        """POST the file to the ticket's presigned form: every issued field, then the file (streamed)."""
        expires = ticket.get("file_upload_url_expires_at")
        if expires and _parse_time(expires) <= time.time():
            raise ImportSpecError(f"the upload URL of import {ticket.get('import_id')} expired at {expires}; "
                                  "create a new import")
        fields = dict(ticket["file_upload_body"])
        content_type = fields.get("content-type") or fields.get("Content-Type") or "text/csv"
        with open_upload(file, "profiles.csv") as upload:
            if upload.size is not None and upload.size > MAX_FILE_BYTES:
                raise FileTooLargeError(f"{upload.label}: {upload.size} bytes is over Apsis One's 50 MB limit; "
                                        "split it first")
            stream = MultipartFileStream(fields, upload, content_type)
            # presigned: the URL and fields are the credentials; it is on another host in production,
            # so it is checked before the profile file goes there
            self.fetch_supplied_url("POST", ticket["file_upload_url"], data=stream, idempotent=True,
                                    route="upload", headers={"Content-Type": stream.content_type})
        self.log.info("Uploaded %s (%d bytes) for Apsis One import %s", upload.label, upload.size,
                      ticket.get("import_id"))

    def import_status_call(self, section: str, import_id: str) -> Call:
        return Call("GET", f"/audience/sections/{section}/imports/{import_id}")

    def get_import_status(self, section: str, import_id: str) -> dict[str, Any]:
        return self.call(self.import_status_call(section, import_id))

    @staticmethod
    def to_job_status(payload: Mapping[str, Any]) -> JobStatus:
        result = dict(payload.get("result") or {})
        status = str(result.get("status") or "unknown")
        if status == "completed":
            return JobStatus(JobState.SUCCESS, status, result)
        if status == "error":
            error = result.get("error")
            detail = error.get("detail") or error.get("title") if isinstance(error, Mapping) else error
            return JobStatus(JobState.FAILED, status, result, f"the import ended in error: {detail or 'no detail given'}")
        return JobStatus(JobState.RUNNING, status, result)

    def job_status_call(self, *, section: str, import_id: str, **_: Any) -> Generator[Call, Any, JobStatus]:
        return self.to_job_status((yield self.import_status_call(section, import_id)))

    # --- erasure ----------------------------------------------------------------------------------
    def delete_profile(self, keyspace: str, profile_key: str) -> bool:
        """Delete one profile (GDPR erasure): ``DELETE /audience/keyspaces/{keyspace}/profiles/{key}``
        (the profile endpoints of github.com/ApsisInternational/module-one's API client). ``keyspace`` is
        ``email``, ``mobile`` or a discriminator. True when deleted, False when Apsis has no such profile.
        Rate-limited as the route class ``profiles`` (connection extra ``rate_limits``)."""
        from urllib.parse import quote

        discriminator = KEYSPACES.get(keyspace, keyspace)
        path = f"/audience/keyspaces/{quote(discriminator, safe='')}/profiles/{quote(str(profile_key), safe='')}"
        return self.delete_if_exists(path, route="profiles")
