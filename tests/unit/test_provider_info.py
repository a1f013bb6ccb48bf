"""Provider registration: get_provider_info() against Airflow's own schema, and discovery by Airflow."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import airflow
import jsonschema
import pytest

from airflow_provider_profiles import CONNECTION_FORMS, get_provider_info

CONN_TYPES = {"gainsight_px", "apsis_one", "localytics", "mediarithmics"}


def test_validates_against_airflow_schema():
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_lists_the_four_connection_types_with_form_labels():
    types = {c["connection-type"]: c for c in get_provider_info()["connection-types"]}
    assert set(types) == CONN_TYPES
    for conn in types.values():
        assert conn["hook-name"] and conn["ui-field-behaviour"]["relabeling"].get("password")


def test_every_listed_module_imports():
    info = get_provider_info()
    modules = {m for kind in ("hooks", "operators", "sensors", "triggers") for e in info[kind] for m in e["python-modules"]}
    for module in sorted(modules):
        import_module(module)


@pytest.mark.parametrize("conn_type", sorted(CONN_TYPES))
def test_hook_class_matches_its_connection_type(conn_type):
    module, _, name = CONNECTION_FORMS[conn_type]["hook-class-name"].rpartition(".")
    hook = getattr(import_module(module), name)
    assert hook.conn_type == conn_type and hook.default_conn_name == f"{conn_type}_default"
    assert hook.get_ui_field_behaviour()["relabeling"] == CONNECTION_FORMS[conn_type]["ui-field-behaviour"]["relabeling"]


def test_airflow_discovers_the_provider_and_its_hooks():
    listed = subprocess.run([sys.executable, "-m", "airflow", "providers", "hooks", "--output", "json"],
                            capture_output=True, text=True, check=True)
    # Airflow < 3.2 may print a log line before the JSON: the list is the last line
    hooks = {h["connection_type"]: h for h in json.loads(listed.stdout.strip().splitlines()[-1])}
    for conn_type in CONN_TYPES:
        assert hooks[conn_type]["package_name"] == "airflow-provider-profiles", hooks.get(conn_type)
