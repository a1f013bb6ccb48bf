"""Airflow provider: push user and account profiles into customer-engagement platforms."""

from __future__ import annotations

__version__ = "0.1.0"

# Connection form metadata, declared once: get_provider_info() publishes it to Airflow (which reads it
# without importing hooks) and each hook's get_ui_field_behaviour() returns its own entry.
CONNECTION_FORMS: dict[str, dict] = {
    "gainsight_px": {
        "hook-name": "Gainsight PX (Aptrinsic)",
        "hook-class-name": "airflow_provider_profiles.hooks.gainsight_px.GainsightPXHook",
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
    "apsis_one": {
        "hook-name": "Apsis One",
        "hook-class-name": "airflow_provider_profiles.hooks.apsis_one.ApsisOneHook",
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
    "localytics": {
        "hook-name": "Localytics",
        "hook-class-name": "airflow_provider_profiles.hooks.localytics.LocalyticsHook",
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
    "mediarithmics": {
        "hook-name": "mediarithmics",
        "hook-class-name": "airflow_provider_profiles.hooks.mediarithmics.MediarithmicsHook",
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
}

_VENDORS = {
    "gainsight_px": ("Gainsight PX", "https://support.gainsight.com/PX/API_for_Developers"),
    "apsis_one": ("Apsis One", "https://developers.apsis.com/"),
    "localytics": ("Localytics", "https://docs.localytics.com/dev/profile-api.html"),
    "mediarithmics": ("mediarithmics", "https://developer.mediarithmics.io/"),
}

PREPARATION = "Profiles data preparation"


def get_provider_info() -> dict:
    """Provider metadata for Airflow's ``apache_airflow_provider`` entry point."""
    return {
        "package-name": "airflow-provider-profiles",
        "name": "Profiles (Gainsight PX, Apsis One, Localytics, mediarithmics)",
        "description": "Push user and account profiles into customer-engagement platforms.",
        "versions": [__version__],
        "integrations": [
            *({"integration-name": name, "external-doc-url": url, "tags": ["service"]} for name, url in _VENDORS.values()),
            {"integration-name": PREPARATION, "tags": ["software"]},
        ],
        **{
            kind: [
                {"integration-name": _VENDORS[vendor][0], "python-modules": [f"airflow_provider_profiles.{kind}.{vendor}"]}
                for vendor in _VENDORS
            ]
            for kind in ("hooks", "sensors", "triggers")
        },
        "operators": [
            *({"integration-name": name, "python-modules": [f"airflow_provider_profiles.operators.{vendor}"]}
              for vendor, (name, _) in _VENDORS.items()),
            {"integration-name": PREPARATION, "python-modules": ["airflow_provider_profiles.operators.prepare"]},
        ],
        "connection-types": [{"connection-type": conn_type, **form} for conn_type, form in CONNECTION_FORMS.items()],
    }
