"""``python -m airflow_provider_profiles.testing all`` prints ready-to-paste ``AIRFLOW_CONN_*`` lines on
fixed ports; a DAG run with exactly those lines in its environment reaches every emulator."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import textwrap

import pytest
import requests

from airflow_provider_profiles.testing import EMULATORS
from airflow_provider_profiles.testing.__main__ import ports_for
from tests.conftest import run_dag_file

DAG = '''
import datetime as dt
from airflow.sdk import DAG, task

@task
def reach_every_vendor(changes):
    from airflow_provider_profiles.hooks.apsis_one import ApsisOneHook
    from airflow_provider_profiles.hooks.gainsight_px import GainsightPXHook
    from airflow_provider_profiles.hooks.localytics import LocalyticsHook
    from airflow_provider_profiles.hooks.mediarithmics import MediarithmicsHook
    assert ApsisOneHook().test_connection()[0]
    GainsightPXHook().attribute_types("USER")
    LocalyticsHook().upload_profiles(changes)
    list(MediarithmicsHook().list_document_imports())
    return True

with DAG("emulator_connections", schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False) as dag:
    reach_every_vendor(CHANGES)
'''


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_printed_connection_lines_point_a_dag_at_every_emulator(tmp_path, monkeypatch, airflow_db):
    ports = dict(zip(EMULATORS, free_ports(len(EMULATORS))))
    command = [sys.executable, "-m", "airflow_provider_profiles.testing", "all"]
    for vendor, port in ports.items():
        command += ["--port", f"{vendor}={port}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        urls = dict(process.stdout.readline().split() for _ in EMULATORS)
        assert urls == {vendor: f"http://127.0.0.1:{port}" for vendor, port in ports.items()}
        assert process.stdout.readline().startswith("#")
        lines = [process.stdout.readline().strip() for _ in EMULATORS]
        for line in lines:  # exactly what a user pastes into a shell
            export, assignment = shlex.split(line)
            assert export == "export"
            name, _, value = assignment.partition("=")
            monkeypatch.setenv(name, value)
        assert sorted(name.partition("=")[0] for name in (shlex.split(line)[1] for line in lines)) == sorted(
            f"AIRFLOW_CONN_{vendor.upper()}_DEFAULT" for vendor in EMULATORS)
        changes = tmp_path / "changes.ndjson"
        changes.write_text('{"customer_id":"a","changes":[{"op":"assign","attr":"plan","value":"gold"}]}\n')
        dag_file = tmp_path / "emulator_connections.py"
        dag_file.write_text(textwrap.dedent(DAG).replace("CHANGES", repr(str(changes))))
        _, states = run_dag_file(dag_file)
        assert states == {"reach_every_vendor": "success"}, states
        for vendor, url in urls.items():
            served = requests.get(f"{url}/_emulator/counters", timeout=10).json()["requests"]
            assert served, f"{vendor} emulator was not reached"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_fixed_ports_by_vendor_or_from_a_base_port():
    vendors = list(EMULATORS)
    assert ports_for(vendors, [], 9000) == {vendor: 9000 + i for i, vendor in enumerate(vendors)}
    assert ports_for(vendors, [f"{vendors[1]}=7001"], None)[vendors[1]] == 7001
    assert ports_for(["localytics"], ["8083"], None) == {"localytics": 8083}
    with pytest.raises(ValueError, match="name the vendor"):
        ports_for(vendors, ["8083"], None)
