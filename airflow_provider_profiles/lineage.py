"""What a task reads and where the profiles land, named once for OpenLineage and for Airflow Assets.

Names follow OpenLineage's dataset naming conventions (openlineage.io/docs/spec/naming):

- a vendor: namespace ``<vendor>://<API host[:port]>`` (``mediarithmics://api.mediarithmics.com``;
  the connection's own host, so an emulator's datasets are not production's; the scheme is the vendor
  key with ``-`` for ``_``, as URI schemes allow), name the scope as ``key/value`` pairs
  (``datamart/1000``, ``section/news``, ``org/42``, ``product/AP-XXXX-2/entity/user``);
- a file: namespace ``file`` and the absolute path for local files, ``<scheme>://<bucket>`` and the
  key for object storage.

``profiles_asset(vendor, host=..., **scope)`` is the Asset with the URI ``<namespace>/<name>`` of the
same dataset, so a downstream DAG can be scheduled on "profiles landed in mediarithmics datamart 1000".
Upload operators emit it when asked (``asset=True``) or when it is among their ``outlets``.

Nothing here imports the OpenLineage provider until lineage is asked for: it stays optional.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from airflow_provider_profiles.vendors import load, vendor as vendor_spec

Dataset = tuple[str, str]  # (namespace, name)
ASSET_ALIAS_PREFIX = "profiles-"


def host_of(base_url: str) -> str:
    """``host[:port]`` of a base URL, without user info."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    return f"{host}:{parts.port}" if parts.port else host


def vendor_namespace(vendor: str, host: str | None = None) -> str:
    spec = vendor_spec(vendor)
    if host is None:  # the vendor's production API host (its default region)
        hook = load(spec.hook)
        host = host_of(hook.default_base_urls[hook.default_region])
    elif "://" in host:
        host = host_of(host)
    return f"{spec.key.replace('_', '-')}://{host}"


def profiles_dataset(vendor: str, host: str | None = None, **scope: Any) -> Dataset:
    """(namespace, name) of where profiles land at a vendor; ``scope`` in the order given."""
    if not scope:
        raise ValueError(f"profiles_dataset({vendor!r}) needs a scope, e.g. datamart=1000")
    name = "/".join(f"{quote(str(key), safe='')}/{quote(str(value), safe='')}" for key, value in scope.items())
    return vendor_namespace(vendor, host), name


def profiles_asset(vendor: str, host: str | None = None, **scope: Any):
    """The Asset of a vendor scope: ``profiles_asset("mediarithmics", datamart=1000)`` is
    ``mediarithmics://api.mediarithmics.com/datamart/1000``. ``host`` (or a base URL) for a connection
    that does not use the vendor's default host (another region, an emulator)."""
    from airflow.sdk import Asset

    namespace, name = profiles_dataset(vendor, host, **scope)
    return Asset(uri=f"{namespace}/{name}")


def profiles_asset_alias(vendor: str):
    """The alias through which a task with ``asset=True`` emits the asset it updated (known only at run time)."""
    from airflow.sdk import AssetAlias

    return AssetAlias(name=f"{ASSET_ALIAS_PREFIX}{vendor_spec(vendor).key}")


def file_dataset(path: Any) -> Dataset | None:
    """(namespace, name) of a file; None for what is not a path (a DataFrame, an open file)."""
    if path is None or not isinstance(path, (str, os.PathLike)) and not hasattr(path, "protocol"):
        return None
    text = str(path)
    parts = urlsplit(text)
    if not parts.scheme or parts.scheme in ("file", "local") or len(parts.scheme) == 1:  # C:\... is local
        return "file", os.path.abspath(parts.path if parts.scheme in ("file", "local") else text)
    # the bucket without the connection an ObjectStoragePath keeps in its text (s3://conn_id@bucket/key)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}", parts.path.lstrip("/")


class LineageMixin:
    """``get_openlineage_facets_on_complete`` from what an operator says it read and wrote.

    Operators implement ``lineage_inputs`` / ``lineage_outputs`` (lists of (namespace, name)),
    computed from their rendered fields and connection: the method runs on the instance that
    finished the task, which after a deferral is not the one that started it.
    """

    def lineage_inputs(self) -> list[Dataset]:
        return []

    def lineage_outputs(self) -> list[Dataset]:
        return []

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        from airflow.providers.common.compat.openlineage.facet import Dataset as OLDataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        def datasets(found: list[Dataset | None]) -> list[Any]:
            return [OLDataset(namespace=namespace, name=name) for namespace, name in dict.fromkeys(filter(None, found))]

        return OperatorLineage(inputs=datasets(self.lineage_inputs()), outputs=datasets(self.lineage_outputs()))


def _base_operator() -> type:
    from airflow.providers.common.compat.sdk import BaseOperator

    return BaseOperator


class ProfilesOutputMixin(LineageMixin, _base_operator()):  # type: ignore[misc]
    """An upload or load into a vendor: lineage (the file in, the vendor scope out) and its Asset.

    :param asset: emit the Asset of the scope this task updated (``profiles_asset``) once it succeeded,
        through the alias ``profiles-<vendor>`` added to its outlets; an Asset among ``outlets`` with the
        same URI gets the task's counts as its event's ``extra`` either way.

    Operators set ``vendor`` and implement ``lineage_scope()``. A ``BaseOperator`` itself, so that
    ``asset`` is one of the arguments ``.partial()`` accepts (Airflow checks them class by class).
    """

    vendor: str

    def __init__(self, *, asset: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.asset = asset
        if asset:
            self.outlets = [*self.outlets, profiles_asset_alias(self.vendor)]

    def lineage_scope(self) -> Mapping[str, Any]:
        raise NotImplementedError

    def lineage_base_url(self) -> str:
        """The connection's base URL (its host names the vendor's namespace)."""
        hook = self.hook  # type: ignore[attr-defined]
        hook.connection  # noqa: B018  (read: the base URL comes from it)
        return hook.base_url

    def _finish(self, context: Any, job: Any, status: Any) -> Any:
        """A job operator's end (``RemoteJobOperator._finish``): the result, then the asset events."""
        result = super()._finish(context, job, status)  # type: ignore[misc]
        self.emit_assets(context, result)
        return result

    def lineage_source(self) -> Any:
        return getattr(self, "file", None)

    def landed(self) -> Dataset:
        return profiles_dataset(self.vendor, self.lineage_base_url(), **self.lineage_scope())

    def lineage_inputs(self) -> list[Dataset]:
        return [file_dataset(self.lineage_source())]

    def lineage_outputs(self) -> list[Dataset]:
        return [self.landed()]

    def emit_assets(self, context: Any, result: Any) -> None:
        """Asset events for what landed: through the alias (``asset=True``) and on a matching declared Asset."""
        from airflow.sdk import Asset, AssetAlias

        namespace, name = self.landed()
        uri = f"{namespace}/{name}"
        extra = {key: result.get(key) for key in ("read", "sent", "vendor_succeeded", "vendor_failed")} \
            if isinstance(result, Mapping) else {}
        alias = profiles_asset_alias(self.vendor)
        for outlet in self.outlets:
            if isinstance(outlet, AssetAlias) and outlet.name == alias.name:
                context["outlet_events"][outlet].add(Asset(uri=uri), extra=extra)
                self.log.info("asset %s updated (alias %s)", uri, alias.name)  # type: ignore[attr-defined]
            elif isinstance(outlet, Asset) and outlet.uri == uri:
                context["outlet_events"][outlet].extra.update(extra)
