"""Partitioned declared syncs (``ProfilesSync(partitions=4)``) and several input files, run for real
(``dag.test``) against the Localytics emulator.

What the vendor received is read from the emulator's import jobs (the customer ids of each upload),
so "sent once" means: received once. A partition that fails is retried alone (Airflow's retry of its
upload) and the others' ids are not received again; a run that partly failed commits the partitions
that succeeded, and the next run sends only what the failed one did not commit.
"""

from __future__ import annotations

import collections
import csv
import sqlite3
import textwrap
import uuid

import pytest

from airflow_provider_profiles.sync_group import Destination, FileSource, ProfilesSync, SqlSource, SyncDeclarationError

ROWS = 200
PARTITIONS = 4
PARTITIONED_SQL = ("SELECT uid AS id, name, city FROM users "
                   "WHERE num % {{ params.partitions }} = {{ params.partition }} ORDER BY num")
# every id in two partitions: its own and the next one
OVERLAPPING_SQL = ("SELECT uid AS id, name, city FROM users WHERE num % {{ params.partitions }} IN "
                   "({{ params.partition }}, ({{ params.partition }} + 1) % {{ params.partitions }}) ORDER BY num")

DAG = """
import datetime as dt
from airflow.sdk import DAG
from airflow_provider_profiles.sync_group import Destination, FileSource, ProfilesSync, SqlSource

with DAG({dag_id!r}, schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False,
         default_args={{"retries": 0}}) as dag:
    ProfilesSync(group_id="sync", source={source}, destination=Destination("localytics", conn_id={conn!r}, org_id="60"),
                 mapping={{"customer_id": "id", "name": "name", "city": "city"}}, work_folder={work!r},
                 upload_options={{"poll_interval": 0.2, "retries": {retries}}}{extra})
"""


def user(num: int, changed: tuple[int, ...] = ()) -> tuple[int, str, str, str]:
    return num, f"u{num:04d}", f"Name{num}" + ("-changed" if num in changed else ""), ["Paris", "Lyon"][num % 2]


@pytest.fixture
def localytics(tmp_path, emulator, airflow_connection, run_dag):
    """``run(source, partitions=4, retries=0, extra="")`` runs the declared sync once; returns (task
    states, the report, the emulator, the DAG run). ``received()`` counts each customer id the
    emulator received, over every upload so far."""
    server = emulator("localytics", time_scale=50)
    # a connection of its own: the hook's 10 uploads an hour are counted per connection id in the process
    conn_id = f"part_localytics_{uuid.uuid4().hex[:6]}"
    airflow_connection(conn_id, "localytics", login="localytics-key", password="localytics-secret",
                       host=server.url, extra={"org_id": "60"})

    def run(source: str, partitions: int | None = PARTITIONS, retries: int = 0, extra: str = ""):
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        dag_id = f"partitions_{uuid.uuid4().hex[:8]}"
        dag_file = tmp_path / f"{dag_id}.py"
        dag_file.write_text(textwrap.dedent(DAG.format(
            dag_id=dag_id, source=source, conn=conn_id, work=str(tmp_path / "work"), retries=retries,
            extra=(f", partitions={partitions}" if partitions else "") + extra)))
        dag_run, states = run_dag(dag_file)
        with create_session() as session:
            report = None
            for key in ("return_value", "sync_report"):  # a failed report still pushed what it found
                row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_id, task_ids="sync.report",
                                                         map_indexes=-1, key=key)).first()
                if row is not None:
                    report = XComModel.deserialize_value(row)
                    break
        return states, report, dag_run

    def received() -> collections.Counter:
        with server.emulator.lock:
            return collections.Counter(customer_id for job in server.emulator.jobs.values()
                                       for customer_id, _ in job.get("changes", []))

    run.received, run.emulator = received, server.emulator
    return run


@pytest.fixture
def users_db(tmp_path, airflow_connection):
    """A SQLite table of ROWS users (num 1..ROWS); ``change(*nums)`` renames those rows."""
    path = tmp_path / "crm.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (num INTEGER, uid TEXT, name TEXT, city TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?, ?)", [user(num) for num in range(1, ROWS + 1)])
    conn_id = f"crm_{uuid.uuid4().hex[:6]}"
    airflow_connection(conn_id, "sqlite", host=str(path))

    def source(sql: str = PARTITIONED_SQL) -> str:
        return f"SqlSource({conn_id!r}, {sql!r})"

    def change(*nums: int) -> None:
        with sqlite3.connect(path) as db:
            db.executemany("UPDATE users SET name = name || '-changed' WHERE num = ?", [(num,) for num in nums])

    source.change = change
    return source


def partition_of(num: int) -> int:
    return num % PARTITIONS


def tries(dag_run) -> dict[str, int]:
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).all()
        return {ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): ti.try_number for ti in tis}


@pytest.mark.heavy
def test_a_sql_source_in_four_partitions_sends_each_row_once_then_only_the_changed(localytics, users_db):
    states, report, _ = localytics(users_db())
    assert all(state == "success" for state in states.values()), states
    for index in range(PARTITIONS):
        for stage in ("prepare", "split", "commit"):
            assert states[f"sync.part_{index}.{stage}"] == "success"
    assert all(states[f"sync.part_{index}.check"] == "success" for index in range(PARTITIONS))
    assert (report["read"], report["invalid"], report["unchanged"], report["sent"]) == (ROWS, 0, 0, ROWS), report
    assert report["committed"] and report["not_committed"] == []
    assert [part["sent"] for part in report["partitions"]] == [ROWS // PARTITIONS] * PARTITIONS
    assert sum(part["read"] for part in report["partitions"]) == report["read"]
    received = localytics.received()
    assert len(received) == ROWS and set(received.values()) == {1}, received.most_common(3)

    changed = (7, 150, 151)  # partitions 3, 2 and 3
    users_db.change(*changed)
    states, report, _ = localytics(users_db())
    assert all(state == "success" for state in states.values()), states
    assert (report["read"], report["unchanged"], report["sent"]) == (ROWS, ROWS - 3, 3), report
    assert [part["sent"] for part in report["partitions"]] == [0, 0, 1, 2]
    again = localytics.received() - received
    assert sorted(again) == [f"u{num:04d}" for num in sorted(changed)], again


def test_a_failed_partition_is_retried_alone_and_resends_nothing_the_others_sent(localytics, users_db):
    # the first upload of the run is taken by the vendor, but its answer is lost: that partition's upload
    # fails (its outcome unknown) and Airflow retries it, which sends that partition's file again
    localytics.emulator.inject("drop_after", match="POST /v1/imports/profiles/upload", count=1)
    states, report, dag_run = localytics(users_db(), retries=1)
    assert all(state == "success" for state in states.values()), states
    tried = tries(dag_run)
    retried = [index for index in range(PARTITIONS) if tried[f"sync.part_{index}.upload[0]"] == 2]
    assert len(retried) == 1, tried
    for index in set(range(PARTITIONS)) - set(retried):
        assert all(tried[f"sync.part_{index}.{stage}"] == 1 for stage in ("prepare", "split", "upload[0]", "commit"))
    assert (report["sent"], report["vendor_succeeded"], report["committed"]) == (ROWS, ROWS, True), report
    received = localytics.received()
    assert len(received) == ROWS
    # the retried partition's ids twice (the lost try and the retry), every other id once
    assert {uid for uid, count in received.items() if count == 2} == {
        f"u{num:04d}" for num in range(1, ROWS + 1) if partition_of(num) == retried[0]}, received.most_common(3)
    assert set(received.values()) == {1, 2}


@pytest.mark.heavy
def test_a_partly_failed_run_commits_the_others_and_the_next_run_sends_only_the_rest(localytics, users_db):
    localytics.emulator.inject("status", match="POST /v1/imports/profiles/upload", count=1, status=400,
                               body={"error": "injected"})
    states, report, _ = localytics(users_db())
    failed = [index for index in range(PARTITIONS) if states[f"sync.part_{index}.upload[0]"] == "failed"]
    assert len(failed) == 1, states
    assert states[f"sync.part_{failed[0]}.commit"] == "upstream_failed"
    assert all(states[f"sync.part_{index}.commit"] == "success" for index in range(PARTITIONS) if index not in failed)
    assert states["sync.report"] == "failed"
    assert report["not_committed"] == failed and not report["committed"], report
    received = localytics.received()
    assert len(received) == ROWS - ROWS // PARTITIONS and set(received.values()) == {1}

    states, report, _ = localytics(users_db())
    assert all(state == "success" for state in states.values()), states
    assert report["sent"] == ROWS // PARTITIONS, report
    assert [part["sent"] for part in report["partitions"]] == [ROWS // PARTITIONS if index in failed else 0
                                                               for index in range(PARTITIONS)]
    received = localytics.received()
    assert len(received) == ROWS and set(received.values()) == {1}, received.most_common(3)


@pytest.mark.heavy
def test_an_id_in_two_partitions_is_found_before_anything_is_sent(localytics, users_db):
    states, report, _ = localytics(users_db(OVERLAPPING_SQL))
    # a partition whose check found an id of another partition uploads nothing (under dag.test every
    # prepare runs before the first check: each check finds its ids elsewhere)
    for index in range(PARTITIONS):
        if states[f"sync.part_{index}.check"] == "failed":
            assert states[f"sync.part_{index}.upload"] == "upstream_failed", states
    assert any(states[f"sync.part_{index}.check"] == "failed" for index in range(PARTITIONS)), states
    assert states["sync.report"] == "failed"
    assert report["overlap"]["count"] == 2 * ROWS // PARTITIONS, report  # each partition read 100 rows
    assert report["overlap"]["ids"]["u0001"] == [0, 1]  # num 1: partition 1, and partition 0 (1 = 0 + 1)
    assert max(localytics.received().values(), default=0) <= 1  # no id sent twice


def write_users(path, nums, bad=()):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name", "city"])
        for num in nums:
            _, uid, name, city = user(num)
            writer.writerow(["" if num in bad else uid, name, city])


@pytest.mark.heavy
def test_a_file_source_in_four_partitions_one_file_each(localytics, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index in range(PARTITIONS):  # users-0.csv .. users-3.csv: 50 rows each
        write_users(inputs / f"users-{index}.csv", range(index * 50 + 1, index * 50 + 51))
    source = f"FileSource({str(inputs / 'users-*.csv')!r})"
    states, report, _ = localytics(source)
    assert all(state == "success" for state in states.values()), states
    assert report["sent"] == ROWS and [part["read"] for part in report["partitions"]] == [50] * PARTITIONS, report
    received = localytics.received()
    assert len(received) == ROWS and set(received.values()) == {1}

    # the second run: one row of the third file changed; only its partition sends it
    write_users(inputs / "users-2.csv", range(101, 151))
    with (inputs / "users-2.csv").open() as handle:
        text = handle.read().replace("Name120,", "Name120-changed,")
    (inputs / "users-2.csv").write_text(text)
    states, report, _ = localytics(source)
    assert all(state == "success" for state in states.values()), states
    assert [part["sent"] for part in report["partitions"]] == [0, 0, 1, 0], report
    assert (localytics.received() - received) == collections.Counter({"u0120": 1})


def test_a_file_source_reads_several_files_as_one_and_names_the_file_of_each_reject(localytics, tmp_path):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    write_users(first, range(1, 31), bad=(4,))
    write_users(second, range(31, 61), bad=(33,))
    source = f"FileSource([{str(first)!r}, {str(tmp_path / 'b*.csv')!r}])"
    states, report, _ = localytics(source, partitions=None)
    assert all(state == "success" for state in states.values()), states
    assert sorted(name for name in states) == ["sync.commit", "sync.prepare", "sync.report", "sync.split",
                                               "sync.upload[0]"]
    assert (report["read"], report["invalid"], report["sent"]) == (60, 2, 58), report
    with open(report["not_sent_file"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    # records numbered within their file: line 4 of a.csv's data, line 3 of b.csv's
    assert [row["line"] for row in rows] == [f"{first}:4", f"{second}:3"], rows
    assert len(localytics.received()) == 58


def declare(**changes):
    declaration = dict(
        group_id="g", source=SqlSource("crm", PARTITIONED_SQL), destination=Destination("localytics", org_id="60"),
        mapping={"customer_id": "id", "plan": "plan"}, work_folder="/tmp/w", partitions=PARTITIONS,
    )
    declaration.update(changes)
    from airflow.sdk import DAG

    with DAG("declared_partitions", schedule=None):
        return ProfilesSync(**declaration)


@pytest.mark.parametrize(("changes", "field"), [
    ({"source": SqlSource("crm", "SELECT id, plan FROM users")}, "source.sql"),
    ({"source": SqlSource("crm", "SELECT id, plan FROM users WHERE id % 4 = {{ params.partition }}")}, "source.sql"),
    ({"partitions": 0}, "partitions"),
    ({"partitions": "4"}, "partitions"),
    ({"preview": True}, "preview"),
    ({"only_changed": False}, "only_changed"),
    ({"source": FileSource(["a.csv", "b.csv"])}, "partitions"),
    ({"source": FileSource("in/*.csv"), "destination": Destination("mediarithmics"),
      "mapping": {"user_account_id": "id"}, "mode": "mirror"}, "mode"),
    ({"source": FileSource([]), "partitions": None}, "source.path"),
    ({"source": FileSource(["a.csv", ""]), "partitions": None}, "source.path"),
    ({"source": FileSource(["a.csv", "b.parquet"]), "partitions": None}, "source.format"),
])
def test_a_bad_partitioned_declaration_fails_when_the_dag_is_parsed(changes, field):
    with pytest.raises(SyncDeclarationError) as refused:
        declare(**changes)
    assert refused.value.field == field, str(refused.value)


def test_partitions_expand_into_a_pipeline_each_and_one_gives_todays_group():
    group = declare()
    assert sorted(group.children) == ["g.part_0", "g.part_1", "g.part_2", "g.part_3", "g.report"]
    for index in range(PARTITIONS):
        part = group.children[f"g.part_{index}"]
        assert sorted(part.children) == [f"g.part_{index}.{stage}" for stage in ("check", "commit", "prepare", "split",
                                                                                  "upload")]
        # nothing of a partition depends on another partition's tasks: each can be cleared alone
        for task in part.children.values():
            assert all(other.startswith((f"g.part_{index}.", "g.report")) for other in task.downstream_task_ids)
            assert all(other.startswith(f"g.part_{index}.") for other in task.upstream_task_ids)
    prepared = group.children["g.part_2"].children["g.part_2.prepare"]
    assert prepared.params["partition"] == 2 and prepared.params["partitions"] == PARTITIONS
    assert prepared.sync_state_path == "/tmp/w/g/state/part-2"
    group = declare(partitions=1, source=FileSource(["a.csv", "b.csv"]))
    assert sorted(group.children) == ["g.commit", "g.prepare", "g.report", "g.split", "g.upload"]


class _Pushed:
    """What a task instance is asked to push (the check's only use of its context)."""

    def __init__(self):
        self.pushed = {}

    def xcom_push(self, key, value):
        self.pushed[key] = value


def test_the_later_of_two_overlapping_partitions_to_check_fails_and_the_first_may_commit(tmp_path):
    """No partition waits for another: partition 0 prepares, checks (alone so far) and commits; then
    partition 1, whose rows overlap, prepares and its check finds partition 0's committed ids."""
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_profiles.prepare.engine import prepare
    from airflow_provider_profiles.prepare.sync import SyncState
    from airflow_provider_profiles.sync_group import PartitionsDisjointOperator
    from airflow_provider_profiles.writers import get_writer

    states = [str(tmp_path / "state" / f"part-{index}") for index in range(2)]
    writer = get_writer("localytics", "changes", attributes={"name": "name"}, customer_id="id")

    def prepared(index, nums):
        path = tmp_path / f"part-{index}.csv"
        write_users(path, nums)
        prepare(str(path), writer, str(tmp_path / f"part-{index}.ndjson"), sync=SyncState(states[index]),
                sync_run_key="run-1")

    def check(index):
        ti = _Pushed()
        operator = PartitionsDisjointOperator(task_id=f"check_{index}", partition=index, sync_state_paths=states,
                                              sync_run_key="run-1")
        try:
            return operator.execute({"ti": ti}), ti.pushed
        except AirflowFailException as refused:
            return str(refused), ti.pushed

    prepared(0, range(1, 11))
    result, _ = check(0)
    assert result["compared_with"] == []  # partition 1 has not prepared yet
    SyncState(states[0]).commit("run-1")
    prepared(1, range(9, 21))  # 9 and 10 are partition 0's too
    refused, pushed = check(1)
    assert "u0009 (partitions 0, 1), u0010 (partitions 0, 1)" in refused, refused
    assert pushed["partition_overlap"] == {"count": 2, "ids": {"u0009": [0, 1], "u0010": [0, 1]}}
