"""Airflow provider: push user and account profiles into customer-engagement platforms."""

from __future__ import annotations

from airflow_provider_profiles.vendors import VENDORS, dotted

__version__ = "0.1.0"

PREPARATION = "Profiles data preparation"
# what every vendor shares: the one trigger that waits for any vendor's jobs
SHARED = "Profiles"


def get_provider_info() -> dict:
    """Provider metadata for Airflow's ``apache_airflow_provider`` entry point, derived from ``VENDORS``
    (strings only: Airflow reads it without importing hooks)."""
    vendors = list(VENDORS.values())
    with_jobs = [spec for spec in vendors if spec.has_jobs]
    return {
        "package-name": "airflow-provider-profiles",
        "name": f"Profiles ({', '.join(spec.display_name for spec in vendors)})",
        "description": "Push user and account profiles into customer-engagement platforms.",
        "versions": [__version__],
        "integrations": [
            *({"integration-name": spec.display_name, "external-doc-url": spec.doc_url, "tags": ["service"]}
              for spec in vendors),
            {"integration-name": PREPARATION, "tags": ["software"]},
            {"integration-name": SHARED, "tags": ["software"]},
        ],
        "hooks": [
            {"integration-name": spec.display_name, "python-modules": [spec.hook.partition(":")[0]]} for spec in vendors
        ],
        "sensors": [
            {"integration-name": spec.display_name, "python-modules": [spec.module("sensors")]} for spec in with_jobs
        ],
        "triggers": [{"integration-name": SHARED, "python-modules": ["airflow_provider_profiles.triggers.base"]}],
        "operators": [
            *({"integration-name": spec.display_name, "python-modules": [spec.module("operators")]} for spec in vendors),
            {"integration-name": PREPARATION, "python-modules": ["airflow_provider_profiles.operators.prepare"]},
        ],
        "connection-types": [
            {"connection-type": spec.connection_type, "hook-class-name": dotted(spec.hook), **spec.connection_form}
            for spec in vendors
        ],
    }
