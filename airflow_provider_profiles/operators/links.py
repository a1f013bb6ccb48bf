"""Links to the vendor on the task page (operator extra links), the Airflow 3 way.

A task stores each link's URL in XCom, under the link's ``xcom_key``, as soon as it knows it (a job
created, a rejects file written): the task page shows it while the task still runs or waits in the
triggerer. When the task ends, Airflow calls ``get_link`` in the worker and stores its answer under
that same key, which is all the API server reads (``XComOperatorLink``): ``get_link`` returns what
was stored, or "" when nothing was.

Each vendor operator lists its ``StoredLink``\\s in ``operator_extra_links`` and says what they point
to; the URL comes from the connection's own base URL (an emulator's links point at the emulator),
a vendor console only for the vendor's production hosts. URLs never carry credentials: a URL with
user info, a query string (a presigned URL's signature) or a scheme other than http(s) is not
stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import attrs
from airflow.providers.common.compat.sdk import BaseOperatorLink

from airflow_provider_profiles.lineage import host_of


@attrs.define(frozen=True)  # hashable: links are the keys of the URLs to store
class StoredLink(BaseOperatorLink):
    """A link whose URL the task stored in XCom while it ran (``store_links``)."""

    name: str  # the button on the task page
    key: str  # unique per operator: the XCom key is derived from it

    @property
    def xcom_key(self) -> str:
        return f"_link_{self.key}"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.providers.common.compat.sdk import XCom

        return XCom.get_value(key=self.xcom_key, ti_key=ti_key) or ""


REJECTS_LINK = StoredLink(name="rejects file", key="profiles_rejects")  # rows refused, with their reasons


def store_links(context: Any, links: Mapping[StoredLink, str | None], log: Any = None) -> None:
    """Push each link's URL to XCom; URLs that are missing or not safe to show are left out."""
    for link, url in links.items():
        safe = public_url(url)
        if safe:
            context["ti"].xcom_push(key=link.xcom_key, value=safe)
        elif url and log is not None:
            log.info("link %r not stored: not an http(s) URL without credentials", link.name)


def public_url(url: Any) -> str | None:
    """``url`` when it is http(s) with a host and nothing secret in it (no user info, no query
    string, no fragment), else None. A link is shown to every user of the task page."""
    if not isinstance(url, str) or not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc or parts.fragment:
        return None
    if parts.query and not _plain_query(parts.query):
        return None
    return url


def _plain_query(query: str) -> bool:
    """A query of ids we built ourselves (``uri=...``), not a presigned URL's signature or a token."""
    lowered = query.lower()
    return not any(word in lowered for word in ("signature", "token", "key", "secret", "credential", "sig="))


def production_hosts(hook_class: Any) -> frozenset[str]:
    """The vendor's own API hosts (its default base URLs by region)."""
    return frozenset(host_of(url) for url in getattr(hook_class, "default_base_urls", {}).values())


def console_or_api(base_url: str, hook_class: Any, console: str | None, api_path: str | None) -> str | None:
    """The vendor's console (``console``) for a connection to the vendor's production API, else the
    resource on the connection's own host (``api_path`` under its base URL): an emulator's or a
    private deployment's links never point at production."""
    if console and host_of(base_url) in production_hosts(hook_class):
        return console
    if api_path is None:
        return None
    return f"{base_url.rstrip('/')}/{api_path.lstrip('/')}"


def storage_url(path: Any) -> str | None:
    """A browser address for a file where its storage has one: http(s) as is, ``s3://`` and ``gs://``
    in the AWS and Google Cloud consoles; local and other paths have none."""
    if path is None:
        return None
    text = str(path)
    parts = urlsplit(text)
    if parts.scheme in ("http", "https"):
        return public_url(text)
    key = parts.path.lstrip("/")
    bucket = parts.netloc.rpartition("@")[2]  # without the connection an ObjectStoragePath keeps (conn_id@bucket)
    if parts.scheme in ("s3", "s3a") and bucket and key:
        return f"https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={quote(key)}"
    if parts.scheme in ("gs", "gcs") and bucket and key:
        return f"https://console.cloud.google.com/storage/browser/_details/{bucket}/{quote(key)}"
    return None
