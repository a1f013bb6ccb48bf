"""No secret leaks: after the example DAGs (and whatever else this session ran) every task log, trigger
log, process log, XCom value, rendered template field, file the runs wrote, and the metadata database
itself are scanned for each distinctive connection secret and each access token the Apsis emulator
issued: zero occurrences.

Each source also has to contain a known non-secret string, so an empty or unread source cannot pass.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ISSUED_TOKENS, SECRETS

pytestmark = pytest.mark.e2e


def secrets() -> list[str]:
    values = [value for vendor in SECRETS.values() for value in vendor.values()]
    assert len(values) == 5 and all(len(v) > 12 for v in values)
    return values + sorted(ISSUED_TOKENS)


def leaks(text: str) -> list[str]:
    return [secret for secret in secrets() if secret in text]


def read(paths) -> str:
    return "\n".join(p.read_text(errors="replace") for p in paths if p.is_file())


def test_apsis_tokens_were_collected(example_runs):
    assert ISSUED_TOKENS, "the Apsis emulator issued no token: the runs did not authenticate"


def test_task_logs(cluster, example_runs):
    logs = sorted(p for p in (cluster.home / "logs").glob("dag_id=*/**/attempt=*.log") if ".trigger." not in p.name)
    text = read(logs)
    assert len(logs) >= 20 and "created Localytics job" in text and "Pushing xcom" in text
    assert leaks(text) == []


def test_trigger_logs(cluster, example_runs):
    logs = sorted((cluster.home / "logs").glob("dag_id=*/**/attempt=*.log.trigger.*.log"))
    text = read(logs)
    assert len(logs) >= 5 and "starting" in text
    assert leaks(text) == []


@pytest.mark.parametrize("process", ["scheduler", "triggerer", "dag-processor", "api-server"])
def test_process_logs(cluster, example_runs, process):
    text = read([cluster.home / f"{process}.log"])
    assert len(text) > 200, f"{process}.log is (nearly) empty"
    assert leaks(text) == []


def test_dag_processor_logs(cluster, example_runs):
    text = read((cluster.home / "logs" / "dag_processor").rglob("*.log"))
    assert "example_apsis_one" in text or "Filling up the DagBag" in text
    assert leaks(text) == []


def test_xcom_values(cluster, example_runs):
    rows = cluster.query("select dag_id, task_id, key, value from xcom")
    text = "\n".join(str(row) for row in rows)
    assert len(rows) >= 20 and "activity_id" in text and "import_id" in text and "execution_id" in text
    assert leaks(text) == []


def test_rendered_template_fields(cluster, example_runs):
    rows = cluster.query("select dag_id, task_id, rendered_fields from rendered_task_instance_fields")
    text = "\n".join(str(row) for row in rows)
    assert len(rows) >= 15 and "com.apsis1.sections.default" in text and "paying_users.csv" in text
    assert leaks(text) == []


def test_files_the_runs_wrote(cluster, example_runs):
    files = [p for p in (cluster.home / "data").rglob("*") if p.is_file() and p.suffix in (".csv", ".ndjson")]
    text = read(files)
    assert any(p.name.endswith(".rejects.csv") for p in files) and "c-1001" in text
    assert leaks(text) == []


def test_whole_metadata_database(cluster, example_runs):
    """Catch-all: every byte of the SQLite database and its write-ahead log (variables, audit log, ...)."""
    data = b"".join(p.read_bytes() for p in cluster.home.glob("airflow.db*") if p.is_file())
    assert b"e2e__example_localytics_profiles__" in data and b"activity_id" in data  # runs and XComs
    assert [s for s in secrets() if s.encode() in data] == []
