"""The platforms this provider serves: one ``VendorSpec`` each, in ``VENDORS``, the only list of them.

What differs by vendor outside the vendor's own modules is read from here: the provider info Airflow
reads (``get_provider_info``), the connection forms, the writer lookup, the split step's default
chunk size and the emulator table. Classes are named by ``"module:Class"`` strings and imported only
when asked for (``load``), so Airflow reads the provider info without importing any hook.

A new vendor is an entry here plus its modules: ``hooks/<key>.py``, ``writers/<key>.py``,
``testing/<key>.py``, ``operators/<key>.py``, and ``sensors/<key>.py`` when it runs remote jobs
(``has_jobs``): six files. Waiting for its jobs in the triggerer needs no module of its own: the one
``triggers.base.JobTrigger`` finds the vendor's hook here by its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

PACKAGE = "airflow_provider_profiles"


@dataclass(frozen=True)
class VendorSpec:
    key: str  # module names, operator ``vendor=`` argument, emulator name
    display_name: str
    doc_url: str
    connection_type: str
    # the connection form as Airflow's provider info spells it: hook-name, ui-field-behaviour, conn-fields
    connection_form: dict[str, Any]
    hook: str  # "module:Class"
    writers: dict[str, str]  # format name -> "module:Class"; the first is the default format
    upload_limit: int | None  # bytes per uploaded file (the split step's default chunk size); None: none
    has_jobs: bool  # remote jobs to wait for: a sensor, and JobTrigger may poll them
    emulator: str  # "module:Class"
    sync_adapter: str  # "module:Class": how a declared sync (sync_group) uploads to the vendor
    default_conn_id: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.writers:
            raise ValueError(f"{self.key}: a vendor needs at least one writer")
        object.__setattr__(self, "default_conn_id", f"{self.connection_type}_default")

    @property
    def default_format(self) -> str:
        return next(iter(self.writers))

    def module(self, kind: str) -> str:
        """The vendor's module of a kind (``hooks``, ``operators``, ``sensors``...)."""
        return f"{PACKAGE}.{kind}.{self.key}"

    def writer_path(self, format: str | None = None) -> str:
        format = format or self.default_format
        if format not in self.writers:
            raise ValueError(f"{self.key} has no format {format!r}; choose from {', '.join(self.writers)}")
        return self.writers[format]


def load(path: str) -> Any:
    """The object a ``"module:Class"`` path names, imported now."""
    module_name, _, name = path.partition(":")
    return getattr(import_module(module_name), name)


def dotted(path: str) -> str:
    """``"module:Class"`` as Airflow writes class names: ``"module.Class"``."""
    return path.replace(":", ".")


def vendor(key: str) -> VendorSpec:
    try:
        return VENDORS[key]
    except KeyError:
        raise ValueError(f"unknown vendor {key!r}; choose from {', '.join(VENDORS)}") from None


def connection_form(connection_type: str) -> dict[str, Any] | None:
    """The connection form of the vendor whose connections have this type, or None."""
    return next((s.connection_form for s in VENDORS.values() if s.connection_type == connection_type), None)


def _spec(key: str, **fields: Any) -> VendorSpec:
    writers = {name: f"{PACKAGE}.writers.{key}:{cls}" for name, cls in fields.pop("writers").items()}
    return VendorSpec(
        key=key,
        connection_type=key,
        hook=f"{PACKAGE}.hooks.{key}:{fields.pop('hook')}",
        writers=writers,
        emulator=f"{PACKAGE}.testing.{key}:{fields.pop('emulator')}",
        sync_adapter=f"{PACKAGE}.operators.{key}:{fields.pop('sync_adapter')}",
        **fields,
    )


_ALL = (
    _spec(
        "gainsight_px",
        display_name="Gainsight PX",
        doc_url="https://support.gainsight.com/PX/API_for_Developers",
        connection_form={
            "hook-name": "Gainsight PX (Aptrinsic)",
            "ui-field-behaviour": {
                "hidden-fields": ["login", "schema", "port"],
                "relabeling": {"password": "API key", "host": "Host (optional, overrides the data center)"},
                "placeholders": {"host": "https://api.aptrinsic.com", "extra": '{"data_center": "us"}'},
            },
            "conn-fields": {
                "data_center": {
                    "label": "Data center",
                    "description": "us, eu or us2; ignored when a host is set",
                    "schema": {"type": ["string", "null"], "enum": ["us", "eu", "us2", None], "default": "us"},
                },
                "product_key": {
                    "label": "Product key",
                    "description": "AP-XXXXXXXXXXXX-2, sent as propertyKeys when records are created",
                    "schema": {"type": ["string", "null"]},
                },
            },
        },
        hook="GainsightPXHook",
        writers={"records": "GainsightPXRecordFormat"},
        upload_limit=None,  # one REST request per record: no files
        has_jobs=False,  # each record is written synchronously: nothing to wait for
        emulator="GainsightPXEmulator",
        sync_adapter="GainsightPXSyncAdapter",
    ),
    _spec(
        "apsis_one",
        display_name="Apsis One",
        doc_url="https://developers.apsis.com/",
        connection_form={
            "hook-name": "Apsis One",
            "ui-field-behaviour": {
                "hidden-fields": ["schema", "port"],
                "relabeling": {
                    "login": "Client ID",
                    "password": "Client secret",
                    "host": "Host (optional, overrides the region)",
                },
                "placeholders": {"host": "https://api.apsis.one", "extra": '{"region": "eu"}'},
            },
            "conn-fields": {
                "region": {
                    "label": "Region",
                    "description": "eu or apac; ignored when a host is set",
                    "schema": {"type": ["string", "null"], "enum": ["eu", "apac", None], "default": "eu"},
                },
            },
        },
        hook="ApsisOneHook",
        writers={"csv": "ApsisOneCsvWriter"},
        # "The maximum import file size is 50 MB" (developer.apsis.com/reference/
        # post_v2-audience-sections-section-discriminator-imports-1): a hard limit
        upload_limit=50 * 1000 * 1000,
        has_jobs=True,
        emulator="ApsisOneEmulator",
        sync_adapter="ApsisOneSyncAdapter",
    ),
    _spec(
        "localytics",
        display_name="Localytics",
        doc_url="https://docs.localytics.com/dev/profile-api.html",
        connection_form={
            "hook-name": "Localytics",
            "ui-field-behaviour": {
                "hidden-fields": ["schema", "port"],
                "relabeling": {"login": "API key", "password": "API secret", "host": "Host (optional)"},
                "placeholders": {"host": "https://api.localytics.com"},
            },
            "conn-fields": {
                "org_id": {
                    "label": "Organization ID",
                    "description": "Default org_id for profile imports (an app_id may be given per task instead)",
                    "schema": {"type": ["string", "null"]},
                },
            },
        },
        hook="LocalyticsHook",
        writers={"changes": "ProfileChangesWriter", "audience": "AudienceLinesWriter"},
        # no documented file size; each upload is one of 10 an hour, so files are split only on request
        upload_limit=None,
        has_jobs=True,
        emulator="LocalyticsEmulator",
        sync_adapter="LocalyticsSyncAdapter",
    ),
    _spec(
        "mediarithmics",
        display_name="mediarithmics",
        doc_url="https://developer.mediarithmics.io/",
        connection_form={
            "hook-name": "mediarithmics",
            "ui-field-behaviour": {
                "hidden-fields": ["login", "schema", "port"],
                "relabeling": {"password": "API token", "host": "Host (optional)"},
                "placeholders": {"host": "https://api.mediarithmics.com"},
            },
            "conn-fields": {
                "datamart_id": {
                    "label": "Default datamart ID",
                    "schema": {"type": ["string", "null"]},
                },
            },
        },
        hook="MediarithmicsHook",
        writers={
            "USER_PROFILE": "UserProfileWriter",
            "USER_SEGMENT": "UserSegmentWriter",
            "USER_ACTIVITY": "UserActivityWriter",
            "USER_CHOICE": "UserChoiceWriter",
            "USER_IDENTIFIERS_ASSOCIATION_DECLARATIONS": "UserIdentifiersAssociationWriter",
            "USER_IDENTIFIERS_DELETION": "UserIdentifiersDeletionWriter",
            "USER_IDENTIFIERS_DISSOCIATION_DECLARATIONS": "UserIdentifiersDissociationWriter",
            "USER_POINTS_DELETION": "UserPointsDeletionWriter",
        },
        # "Ensure a maximum size for each file of 100M" / "larger files than 100Mbytes, ... split them"
        # (developer.mediarithmics.io/data-ingestion/bulk-processing): a recommendation for performance,
        # not a hard limit. 100 MB read as 10^8 bytes, the smaller reading, so a chunk meets either.
        upload_limit=100 * 1000 * 1000,
        has_jobs=True,
        emulator="MediarithmicsEmulator",
        sync_adapter="MediarithmicsSyncAdapter",
    ),
)

VENDORS: dict[str, VendorSpec] = {spec.key: spec for spec in _ALL}
