"""Extract -> prepare -> split -> upload -> commit, run by Airflow (``dag.test``) on the emulator.

The source is a SQLite database behind an Airflow connection (common-sql hook); the uploads go to
the Localytics emulator over HTTP. Three runs: a full first sync, a second whose uploads fail (no
commit), and a third that must resend everything changed since the first.
"""

from __future__ import annotations

import json
import sqlite3
import textwrap
import uuid

import pytest

from airflow_provider_profiles.operators.prepare import (
    CommitSyncStateOperator,
    ProfilesFileTransformOperator,
    SplitFileOperator,
    SqlToProfilesFileOperator,
)

pytest.importorskip("airflow.providers.sqlite", reason="needs apache-airflow-providers-sqlite")

DAG = """
import datetime as dt
from airflow.sdk import DAG
from airflow_provider_profiles.operators.localytics import LocalyticsProfileImportOperator
from airflow_provider_profiles.operators.prepare import (
    CommitSyncStateOperator, SplitFileOperator, SqlToProfilesFileOperator)

with DAG({dag_id!r}, schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False) as dag:
    prepare = SqlToProfilesFileOperator(
        task_id="prepare", conn_id={sql_conn!r}, sql="SELECT id, name, plan FROM users ORDER BY id",
        vendor="localytics", writer_options={{"customer_id": "id", "attributes": {{"name": "name", "plan": "plan"}}}},
        output_path={work!r} + "/{{{{ run_id }}}}/users.ndjson", batch_rows=2,
        only_changed=True, sync_state_path={state!r}, allow_empty=True,
    )
    split = SplitFileOperator(task_id="split", source_path=prepare.output, vendor="localytics", max_rows=2)
    upload = LocalyticsProfileImportOperator.partial(
        task_id="upload", conn_id={api_conn!r}, poll_interval=0.1, retries=0,
    ).expand(file=split.output)
    commit = CommitSyncStateOperator(task_id="commit", sync_state_path={state!r}, upload_results=upload.output)
"""


@pytest.fixture
def database(tmp_path, airflow_connection):
    path = tmp_path / "crm.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id TEXT, name TEXT, plan TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?)", [(f"u{i}", f"name {i}", "free") for i in range(1, 6)])
    conn_id = f"crm_{uuid.uuid4().hex[:6]}"
    airflow_connection(conn_id, "sqlite", host=str(path))
    return path, conn_id


def run_dag(tmp_path, **values):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from tests.conftest import run_dag_file

    dag_id = f"prepare_{uuid.uuid4().hex[:10]}"
    dag_file = tmp_path / f"{dag_id}.py"
    dag_file.write_text(textwrap.dedent(DAG.format(dag_id=dag_id, **values)))
    dag_run, states = run_dag_file(dag_file)
    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_id, task_ids="prepare",
                                                 map_indexes=-1, key="return_value")).first()
        prepared = XComModel.deserialize_value(row) if row is not None else None
    return states, prepared


def test_sql_extract_incremental_sync_through_three_dag_runs(tmp_path, database, emulator, airflow_connection, airflow_db):
    db_path, sql_conn = database
    server = emulator("localytics", time_scale=50)
    good = f"api_{uuid.uuid4().hex[:6]}"
    airflow_connection(good, "localytics", login="localytics-key", password="localytics-secret", host=server.url,
                       extra={"org_id": "60"})
    broken = f"api_{uuid.uuid4().hex[:6]}"
    airflow_connection(broken, "localytics", login="localytics-key", password="wrong", host=server.url,
                       extra={"org_id": "60"})
    common = dict(sql_conn=sql_conn, work=str(tmp_path / "work"), state=str(tmp_path / "state"))

    states, prepared = run_dag(tmp_path, api_conn=good, **common)
    assert states["commit"] == "success", states
    assert (prepared["read"], prepared["written"], prepared["unchanged"]) == (5, 5, 0)
    assert [k for k in states if k.startswith("upload[")] == ["upload[0]", "upload[1]", "upload[2]"]
    profiles = server.emulator.snapshot()["profiles"]["org_id:60"]
    assert set(profiles) == {"u1", "u2", "u3", "u4", "u5"}

    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE users SET plan = 'pro' WHERE id = 'u2'")
        db.execute("INSERT INTO users VALUES ('u6', 'name 6', 'free')")
    states, prepared = run_dag(tmp_path, api_conn=broken, **common)
    assert states["upload[0]"] == "failed" and states["commit"] != "success"
    assert (prepared["written"], prepared["unchanged"]) == (2, 4)

    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE users SET name = 'renamed' WHERE id = 'u4'")
    states, prepared = run_dag(tmp_path, api_conn=good, **common)
    assert states["commit"] == "success", states
    assert (prepared["written"], prepared["unchanged"]) == (3, 3)  # u2 and u6 again, and u4
    profiles = server.emulator.snapshot()["profiles"]["org_id:60"]
    assert set(profiles) == {f"u{i}" for i in range(1, 7)}
    assert json.dumps(profiles["u2"]).count("pro") and json.dumps(profiles["u4"]).count("renamed")

    states, prepared = run_dag(tmp_path, api_conn=good, **common)
    assert (prepared["written"], prepared["unchanged"]) == (0, 6)
    assert states["split"] == "success"


def test_file_transform_operator_with_mapping_and_rejects(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("mail,first,joined\na@x.io,Ann,2024-01-05\nnot-an-email,Bob,2024-01-06\nc@x.io,Cy,05/01/2024\n")
    operator = ProfilesFileTransformOperator(
        task_id="prepare", source_path=str(source), vendor="apsis_one",
        writer_options={"columns": ["email", "first_name", "joined"], "keyspace_field": "email",
                        "keyspace": "com.apsis1.keyspaces.email"},
        mapping={"email": "mail", "first_name": "first", "joined": {"source": "joined", "type": "date"}},
        output_path=str(tmp_path / "out" / "apsis.csv"), max_rejected_ratio=None,  # the rejects are the point here
    )
    result = operator.execute({})
    assert (result["read"], result["written"], result["rejected"]) == (3, 1, 2)
    assert (tmp_path / "out" / "apsis.csv").read_text() == "email,first_name,joined\na@x.io,Ann,2024-01-05\n"
    rejects = (tmp_path / "out" / "apsis.csv.rejects.csv").read_text().splitlines()
    assert rejects[1].startswith("2,not-an-email,email: not an email address")
    assert rejects[2].startswith("3,c@x.io,joined: '05/01/2024' is not an ISO 8601 date")
    assert set(operator.template_fields) >= {"source_path", "output_path", "mapping", "sync_state_path"}


def test_too_many_rejects_fail_the_task(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,plan\n,a\n,b\n3,c\n")
    operator = ProfilesFileTransformOperator(
        task_id="prepare", source_path=str(source), vendor="localytics", max_rejected_ratio=0.5,
        writer_options={"customer_id": "id", "attributes": {"plan": "plan"}}, output_path=str(tmp_path / "o.ndjson"),
    )
    with pytest.raises(Exception, match="2 of 3 rows rejected"):
        operator.execute({})


def test_split_defaults_follow_the_vendor(tmp_path):
    source = tmp_path / "big.ndjson"
    source.write_text("{}\n" * 10)
    assert SplitFileOperator(task_id="s", source_path=str(source), vendor="localytics").execute({}) == [str(source)]
    chunks = SplitFileOperator(task_id="t", source_path={"output": str(source)}, vendor="apsis_one", max_rows=4).execute({})
    assert len(chunks) == 3


def test_operators_check_arguments_at_parse_time():
    with pytest.raises(ValueError, match="needs sync_state_path"):
        SqlToProfilesFileOperator(task_id="a", sql="select 1", conn_id="x", vendor="localytics", output_path="o",
                                  only_changed=True)
    with pytest.raises(ValueError, match="include_deletions needs only_changed"):
        ProfilesFileTransformOperator(task_id="b", source_path="s", vendor="mediarithmics", output_path="o",
                                      include_deletions=True)
    assert CommitSyncStateOperator(task_id="c", sync_state_path="s").trigger_rule == "all_success"
