"""Provider registration: get_provider_info() against Airflow's own schema, derived from VENDORS, and
discovery by Airflow; every class path VENDORS names imports to the right kind of class."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

import airflow
import jsonschema
import pytest

from airflow_provider_profiles import get_provider_info
from airflow_provider_profiles.vendors import VENDORS, dotted, load

SCHEMA = Path(airflow.__file__).parent / "provider_info.schema.json"  # the one the installed Airflow ships
WITH_JOBS = sorted(key for key, spec in VENDORS.items() if spec.has_jobs)
WITHOUT_JOBS = sorted(key for key, spec in VENDORS.items() if not spec.has_jobs)


def _names_and_modules(entries: list[dict]) -> dict[str, list[str]]:
    return {entry["integration-name"]: entry["python-modules"] for entry in entries}


def test_validates_against_airflow_schema():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_the_four_vendors_and_gainsight_px_has_no_jobs():
    assert set(VENDORS) == {"gainsight_px", "apsis_one", "localytics", "mediarithmics"}
    assert WITHOUT_JOBS == ["gainsight_px"]


def test_connection_types_come_from_the_vendor_forms():
    types = {c["connection-type"]: c for c in get_provider_info()["connection-types"]}
    assert set(types) == {spec.connection_type for spec in VENDORS.values()}
    for spec in VENDORS.values():
        conn = types[spec.connection_type]
        assert conn["hook-class-name"] == dotted(spec.hook)
        assert {k: v for k, v in conn.items() if k not in ("connection-type", "hook-class-name")} == spec.connection_form
        assert conn["hook-name"] and conn["ui-field-behaviour"]["relabeling"].get("password")


def test_hooks_and_operators_for_every_vendor_sensors_only_with_jobs_and_one_trigger():
    info = get_provider_info()
    hooks = _names_and_modules(info["hooks"])
    assert hooks == {spec.display_name: [spec.hook.partition(":")[0]] for spec in VENDORS.values()}
    operators = _names_and_modules(info["operators"])
    assert all(operators[spec.display_name] == [spec.module("operators")] for spec in VENDORS.values())
    sensors = _names_and_modules(info["sensors"])
    assert sensors == {VENDORS[key].display_name: [VENDORS[key].module("sensors")] for key in WITH_JOBS}
    # one trigger for every vendor with jobs, listed once under the provider's own integration
    assert info["triggers"] == [{"integration-name": "Profiles",
                                 "python-modules": ["airflow_provider_profiles.triggers.base"]}]
    integrations = {i["integration-name"]: i for i in info["integrations"]}
    assert "Profiles" in integrations
    assert all(integrations[spec.display_name]["external-doc-url"] == spec.doc_url for spec in VENDORS.values())


@pytest.mark.parametrize("key", WITHOUT_JOBS)
def test_a_vendor_without_jobs_has_no_sensor_module(key):
    assert find_spec(VENDORS[key].module("sensors")) is None, f"a sensor module for {key}, which has no jobs"


@pytest.mark.parametrize("key", sorted(VENDORS))
def test_no_vendor_has_a_trigger_module(key):
    assert find_spec(VENDORS[key].module("triggers")) is None, f"a trigger module for {key}: JobTrigger serves all"


@pytest.mark.parametrize("key", WITH_JOBS)
def test_the_trigger_finds_each_vendor_hook_by_its_key(key):
    from airflow_provider_profiles.triggers.base import job_hook_class

    assert job_hook_class(key) is load(VENDORS[key].hook)


def test_every_listed_module_imports():
    info = get_provider_info()
    modules = {m for kind in ("hooks", "operators", "sensors", "triggers") for e in info[kind] for m in e["python-modules"]}
    for module in sorted(modules):
        import_module(module)


@pytest.mark.parametrize("key", sorted(VENDORS))
def test_hook_path_imports_to_the_hook_of_its_connection_type(key):
    from airflow_provider_profiles.hooks.base import ProfilesHook

    spec = VENDORS[key]
    hook = load(spec.hook)
    assert issubclass(hook, ProfilesHook)
    assert hook.conn_type == spec.connection_type and hook.default_conn_name == spec.default_conn_id
    behaviour = hook.get_ui_field_behaviour()
    form = spec.connection_form["ui-field-behaviour"]
    assert behaviour["relabeling"] == form["relabeling"]
    assert behaviour["hidden_fields"] == form["hidden-fields"]


@pytest.mark.parametrize("key", sorted(VENDORS))
def test_writer_paths_import_to_format_writers_found_by_the_lookup(key):
    from airflow_provider_profiles.prepare.writer import FormatWriter
    from airflow_provider_profiles.writers import writer_class

    spec = VENDORS[key]
    for format, path in spec.writers.items():
        cls = load(path)
        assert isinstance(cls, type) and issubclass(cls, FormatWriter), path
        assert writer_class(key, format) is cls
    assert writer_class(key) is load(next(iter(spec.writers.values())))


@pytest.mark.parametrize("key", sorted(VENDORS))
def test_emulator_path_imports_to_the_emulator_that_create_serves(key):
    from airflow_provider_profiles.testing import EMULATORS, Emulator

    cls = load(VENDORS[key].emulator)
    assert issubclass(cls, Emulator)
    assert EMULATORS[key] == VENDORS[key].emulator


def test_hooks_check_files_against_the_vendor_upload_limit():
    """One figure per vendor: the hooks' limits are the split step's default chunk size."""
    from airflow_provider_profiles.hooks import apsis_one, mediarithmics

    assert apsis_one.MAX_FILE_BYTES == VENDORS["apsis_one"].upload_limit == 50_000_000
    assert mediarithmics.MAX_FILE_BYTES == VENDORS["mediarithmics"].upload_limit == 100_000_000


def test_provider_info_imports_no_hook_writer_or_airflow():
    """Airflow reads the provider info in every process: it costs two small modules, nothing more."""
    code = ("import sys; from airflow_provider_profiles import get_provider_info; get_provider_info(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('airflow', 'airflow_provider_profiles', "
            "'requests', 'duckdb', 'pandas')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['airflow_provider_profiles', 'airflow_provider_profiles.vendors']"


def test_airflow_discovers_the_provider_and_its_hooks():
    listed = subprocess.run([sys.executable, "-m", "airflow", "providers", "hooks", "--output", "json"],
                            capture_output=True, text=True, check=True)
    # Airflow < 3.2 may print a log line before the JSON: the list is the last line
    hooks = {h["connection_type"]: h for h in json.loads(listed.stdout.strip().splitlines()[-1])}
    for spec in VENDORS.values():
        assert hooks[spec.connection_type]["package_name"] == "airflow-provider-profiles", hooks.get(spec.connection_type)
