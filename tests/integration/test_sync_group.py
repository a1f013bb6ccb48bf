"""A sync declared once (``sync_group.ProfilesSync``), run for real (``dag.test``) against the emulators.

For each vendor: a full run, then an incremental run with 1% of the rows changed; the emulator's
state and the report's counts are checked. A preview leaves the emulator untouched and its counts
equal what the next run sends. A row count far from the last run's fails the report. A bad
declaration fails when the DAG is parsed, naming the field.
"""

from __future__ import annotations

import csv
import inspect
import json
import textwrap
import uuid

import pytest

from airflow_provider_profiles.sync_group import Destination, FileSource, ProfilesSync, SqlSource, SyncDeclarationError

ROWS = 200

DAG = """
import datetime as dt
from airflow.sdk import DAG
from airflow_provider_profiles.sync_group import Destination, FileSource, ProfilesSync, SqlSource

with DAG({dag_id!r}, schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False,
         default_args={{"retries": 0}}) as dag:
    ProfilesSync(group_id="sync", source={source}, destination={destination}, mapping={mapping!r},
                 mode={mode!r}, work_folder={work!r}, preview={preview!r}{extra})
"""

DAG_ID = "sync_" + uuid.uuid4().hex[:8]


def users(count: int = ROWS, changed: tuple[int, ...] = (), bad: tuple[int, ...] = ()) -> list[dict[str, str]]:
    rows = []
    for i in range(1, count + 1):
        rows.append({"id": "" if i in bad else f"u{i:04d}", "email": f"user{i}@example.com",
                     "name": f"Name{i}" + ("-changed" if i in changed else ""), "city": ["Paris", "Lyon"][i % 2]})
    return rows


VENDORS = {
    "gainsight_px": dict(
        destination='Destination("gainsight_px", conn_id="{conn}", entity="USER")',
        mapping={"identifyId": "id", "email": "email", "firstName": "name", "location.city": "city"},
        upload="load",
    ),
    "apsis_one": dict(
        destination=('Destination("apsis_one", conn_id="{conn}", section="com.apsis1.sections.default", '
                     'keyspace="email", attributes={"first_name": "First name", "city": "City"})'),
        mapping={"email": "email", "first_name": "name", "city": "city"},
        upload="upload",
        extra=', upload_options={"poll_interval": 0.2}',
    ),
    "localytics": dict(
        destination='Destination("localytics", conn_id="{conn}", org_id="60")',
        mapping={"customer_id": "id", "name": "name", "city": "city"},
        upload="upload",
        extra=', upload_options={"poll_interval": 0.2}',
    ),
    "mediarithmics": dict(
        destination='Destination("mediarithmics", conn_id="{conn}", document_type="USER_PROFILE")',
        mapping={"user_account_id": "id", "compartment_id": {"const": "1600"}, "name": "name", "city": "city"},
        upload="upload",
        extra=', upload_options={"poll_interval": 0.2}',
    ),
}


@pytest.fixture
def sync(tmp_path, emulator, airflow_connection, run_dag):
    """``sync(vendor, rows, preview=False, mode="upsert", extra="")`` runs the declared sync once;
    returns (task states, the report or preview, the emulator's snapshot)."""
    servers, conn_ids = {}, {}

    def start(vendor):
        if vendor not in servers:
            config = {"gainsight_px": {}, "apsis_one": {"queued_seconds": 0.05, "processing_seconds": 0.2},
                      "localytics": {"time_scale": 50},
                      "mediarithmics": {"pending_seconds": 0, "running_seconds": 0}}[vendor]
            server = servers[vendor] = emulator(vendor, **config)
            # a connection of its own per test: the hooks' client-side limits (Localytics' 10 uploads an
            # hour) are shared per connection id within the process
            conn_id = conn_ids[vendor] = f"sync_{vendor}_{uuid.uuid4().hex[:6]}"
            if vendor == "localytics":
                airflow_connection(conn_id, "localytics", login="localytics-key", password="localytics-secret",
                                   host=server.url, extra={"org_id": "60"})
            else:
                airflow_connection(conn_id, **server.emulator.connection())
        return servers[vendor]

    def run(vendor, rows, preview=False, mode="upsert", extra=None, source=None, status_answer=None):
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        server = start(vendor)
        if status_answer is not None:  # Localytics' first status answer for the import
            server.emulator.inject("status", match="GET /v1/imports/profiles/status/", status=200, body=status_answer)
        spec = VENDORS[vendor]
        data = tmp_path / "users.csv"
        with data.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "email", "name", "city"])
            writer.writeheader()
            writer.writerows(rows)
        dag_id = f"{DAG_ID}_{uuid.uuid4().hex[:6]}"
        dag_file = tmp_path / f"{dag_id}.py"
        dag_file.write_text(textwrap.dedent(DAG.format(
            dag_id=dag_id, source=source or f"FileSource({str(data)!r})",
            destination=spec["destination"].replace("{conn}", conn_ids[vendor]),
            mapping=spec["mapping"], mode=mode, work=str(tmp_path / "work"), preview=preview,
            extra=spec.get("extra", "") + (extra or ""))))
        dag_run, states = run_dag(dag_file)
        last = "sync.preview" if preview else "sync.report"
        with create_session() as session:
            row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_id, task_ids=last,
                                                     map_indexes=-1, key="return_value")).first()
            if row is None and not preview:  # a failed report still pushed what it found
                row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_id, task_ids=last,
                                                         map_indexes=-1, key="sync_report")).first()
            result = XComModel.deserialize_value(row) if row is not None else None
        return states, result, server.emulator.snapshot()

    return run


def vendor_state(vendor: str, snapshot: dict) -> dict:
    """What the vendor holds, by id: {id: name}, or for mediarithmics the lines its executions took."""
    if vendor == "gainsight_px":
        return {key: user.get("firstName") for key, user in snapshot["users"].items()}
    if vendor == "apsis_one":
        profiles = next(iter(snapshot["profiles"].values()), {})
        return {key: json.dumps(profile) for key, profile in profiles.items()}
    if vendor == "localytics":
        return {key: json.dumps(profile) for key, profile in snapshot["profiles"].get("org_id:60", {}).items()}
    executions = snapshot["executions"].values()
    return {"lines": sum(e["parameters"]["number_of_lines"] for e in executions),
            "success": sum(e["result"]["total_success"] for e in executions)}


@pytest.mark.parametrize("vendor", list(VENDORS))
def test_a_declared_sync_runs_full_then_incremental(sync, vendor):
    changed = (7, 150)  # 1% of 200
    states, report, snapshot = sync(vendor, users())
    assert all(state == "success" for state in states.values()), states
    assert (report["read"], report["invalid"], report["unchanged"], report["sent"]) == (ROWS, 0, 0, ROWS), report
    assert report["vendor_succeeded"] + report["vendor_failed"] == ROWS
    assert report["committed"] and report["bottleneck"] in report["seconds"]
    assert report["seconds"]["prepare"] is not None and report["seconds"]["upload"] is not None
    assert set(report["seconds"]) == {"extract", "prepare", "split", "upload", "vendor wait", "commit"}
    first = vendor_state(vendor, snapshot)

    states, report, snapshot = sync(vendor, users(changed=changed))
    assert all(state == "success" for state in states.values()), states
    assert (report["read"], report["unchanged"], report["sent"], report["vendor_succeeded"]) == (ROWS, 198, 2, 2), report
    held = vendor_state(vendor, snapshot)
    if vendor == "mediarithmics":
        assert held == {"lines": ROWS + 2, "success": ROWS + 2}
    else:
        assert len(held) == len(first) == ROWS
        assert sum(held[key] != first[key] for key in held) == 2
        assert all("-changed" in held[key] for key in held if held[key] != first[key])


def test_a_preview_sends_nothing_and_counts_what_the_next_run_sends(sync):
    vendor = "localytics"
    sync(vendor, users())
    rows = users(count=ROWS + 3, changed=(3, 4), bad=(9,))
    states, preview, snapshot = sync(vendor, rows, preview=True)
    assert all(state == "success" for state in states.values()), states
    assert snapshot["jobs"] and len(snapshot["jobs"]) == 1  # the first run's upload only
    assert (preview["new"], preview["changed"], preview["invalid"], preview["to_send"]) == (3, 2, 1, 5), preview
    assert preview["unchanged"] == ROWS - 3
    assert len(preview["samples"]["new"]) == 3 and preview["samples"]["invalid"][0]["line"]
    states, report, snapshot = sync(vendor, rows)
    assert report["sent"] == preview["to_send"] and report["invalid"] == preview["invalid"], report
    assert report["unchanged"] == preview["unchanged"]


@pytest.mark.parametrize("vendor", list(VENDORS))
def test_a_run_with_nothing_new_creates_nothing_at_the_vendor(sync, vendor):
    """The days nothing changed: a success that sends nothing and creates nothing remote (no empty
    import, job or execution), and still reports."""
    sync(vendor, users(count=20))
    states, report, before = sync(vendor, users(count=20))
    assert all(state == "success" for state in states.values()), states
    assert (report["read"], report["unchanged"], report["sent"]) == (20, 20, 0), report
    _, _, after = sync(vendor, users(count=20))
    remote = {"gainsight_px": "writes", "apsis_one": "imports", "localytics": "jobs", "mediarithmics": "document_imports"}
    assert after[remote[vendor]] == before[remote[vendor]], (vendor, before[remote[vendor]], after[remote[vendor]])
    if vendor == "mediarithmics":
        assert len(after["executions"]) == len(before["executions"])


@pytest.mark.parametrize("vendor", ["gainsight_px", "apsis_one", "mediarithmics"])
def test_a_preview_for_every_vendor_leaves_the_emulator_untouched(sync, vendor):
    states, preview, snapshot = sync(vendor, users(count=20), preview=True)
    assert all(state == "success" for state in states.values()), states
    assert preview["to_send"] == preview["new"] == 20
    held = vendor_state(vendor, snapshot)
    assert held in ({}, {"lines": 0, "success": 0}), held


def test_mirror_deletes_the_ids_gone_since_the_last_sync(sync):
    states, report, _ = sync("mediarithmics", users(count=50), mode="mirror")
    assert states["sync.report"] == "success", states
    states, report, snapshot = sync("mediarithmics", users(count=48), mode="mirror")
    assert (report["read"], report["deleted"], report["unchanged"], report["sent"]) == (48, 2, 48, 2), report


def test_a_row_count_far_from_the_last_run_fails_the_report(sync):
    extra = ", max_row_count_change=0.5"
    states, report, _ = sync("localytics", users(), extra=extra)
    assert states["sync.report"] == "success"
    states, report, _ = sync("localytics", users(count=ROWS + 150), extra=extra)  # +75%
    assert states["sync.report"] == "failed", states
    # warned, not failed
    states, report, _ = sync("localytics", users(count=ROWS + 400), extra=extra + ', on_threshold="warn"')
    assert states["sync.report"] == "success" and report["thresholds_crossed"], report


def test_rows_that_did_not_make_it_are_listed_in_one_csv(sync):
    extra = ", max_invalid_ratio=0.01"
    states, report, _ = sync("localytics", users(count=30, bad=(4, 5)), extra=extra + ', on_threshold="warn"')
    assert states["sync.report"] == "success", states
    assert report["invalid"] == 2 and report["thresholds_crossed"], report
    with open(report["not_sent_file"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["line"], row["stage"]) for row in rows] == [("4", "prepare"), ("5", "prepare")], rows
    assert all(row["reason"] for row in rows) and report["invalid_reasons"]
    states, report, _ = sync("localytics", users(count=30, bad=(4, 5)), extra=extra)
    assert states["sync.report"] == "failed", states


def statistics(successful: int, failed: int, total: int) -> dict:
    return {"status": "Completed", "error_log": None, "upload_statistics": {
        "successful_imports": successful, "parsed_imports": successful, "failed_imports": failed,
        "total_number_of_imports": total}}


def test_vendor_failures_cross_their_threshold_and_are_not_committed(sync):
    states, report, _ = sync("localytics", users(count=30), extra=", max_vendor_failed_ratio=0.01",
                             status_answer=statistics(29, 1, 30))
    assert states["sync.upload[0]"] == "success" and states["sync.commit"] == "failed", states
    assert states["sync.report"] == "failed"
    assert (report["sent"], report["vendor_succeeded"], report["vendor_failed"], report["committed"]) == (30, 29, 1, False)


def test_a_stage_that_lost_rows_fails_the_report_naming_it(sync):
    """The vendor counted 29 records in a file of 30 lines: lost between prepare and the vendor."""
    states, report, _ = sync("localytics", users(count=30), status_answer=statistics(29, 0, 29),
                             extra=', commit_options={"accept_vendor_failures": True}')
    assert states["sync.report"] == "failed", states
    assert report["sent"] == 29 and report["written"] == 30
    assert report["reconcile_problems"] == ["split/upload: prepare wrote 30 line(s), the uploads read 29"]


def declare(**changes):
    declaration = dict(
        group_id="g", source=FileSource("in.csv"), destination=Destination("localytics", org_id="60"),
        mapping={"customer_id": "id", "plan": "plan"}, work_folder="/tmp/w",
    )
    declaration.update(changes)
    from airflow.sdk import DAG

    with DAG("declared", schedule=None):
        return ProfilesSync(**declaration)


@pytest.mark.parametrize(("changes", "field"), [
    ({"destination": Destination("salesforce")}, "destination.vendor"),
    ({"destination": Destination("localytics", org="60")}, "destination.org"),
    ({"destination": Destination("apsis_one", section="s")}, "destination.keyspace"),
    ({"destination": Destination("localytics", format="csv")}, "destination.format"),
    ({"destination": Destination("mediarithmics", document_type="USER_PROFILES")}, "destination.document_type"),
    ({"destination": Destination("mediarithmics", document_type="USER_SEGMENT")}, "destination.writer_options"),
    ({"mapping": {"customer_id": "id", "plan": {"source": "plan", "type": "decimal"}}}, "mapping"),
    ({"mapping": {"customer_id": "id", "plan": 5}}, "mapping"),
    ({"source": FileSource("in.csv", format="xlsx")}, "source.format"),
    ({"mode": "mirror"}, "mode"),
    ({"mode": "update"}, "mode"),
    ({"mode": "sideways"}, "mode"),
    ({"max_invalid_ratio": "5%"}, "max_invalid_ratio"),
    ({"upload_options": {"poll_intervall": 5}}, "upload_options"),
    ({"prepare_options": {"no_such_option": 1}}, "prepare_options"),
    ({"source": FileSource([])}, "source.path"),
    ({"source": FileSource(["a.csv", "b.ndjson"])}, "source.format"),
    ({"destination": Destination("gainsight_px"), "mapping": {"email": "email"}}, "mapping"),
    ({"destination": Destination("mediarithmics"), "mapping": {"user_account_id": "id"}, "mode": "mirror",
      "only_changed": False}, "only_changed"),
])
def test_a_bad_declaration_fails_when_the_dag_is_parsed(changes, field):
    with pytest.raises(SyncDeclarationError) as refused:
        declare(**changes)
    assert refused.value.field == field, str(refused.value)
    assert f": {field}: " in str(refused.value)


@pytest.mark.parametrize("vendor", list(VENDORS))
def test_every_task_of_a_sync_reads_its_files_through_the_declared_storage_connection(vendor):
    """``storage_conn_id`` reaches every task that reads or writes the run's files (a path without
    the connection in its URL is otherwise read with the default connection)."""
    destination = {"apsis_one": Destination("apsis_one", section="s", keyspace="email", attributes={"plan": "Plan"}),
                   "gainsight_px": Destination("gainsight_px")}.get(vendor, Destination(vendor, org_id="60")
                                                                   if vendor == "localytics" else Destination(vendor))
    mapping = {"apsis_one": {"email": "id", "plan": "plan"}, "gainsight_px": {"identifyId": "id", "email": "plan"},
               "localytics": {"customer_id": "id", "plan": "plan"},
               "mediarithmics": {"user_account_id": "id", "plan": "plan"}}[vendor]
    group = declare(destination=destination, mapping=mapping, storage_conn_id="lake", work_folder="s3://bucket/w")
    readers = {}
    for task_id, task in group.children.items():
        mapped = getattr(task, "partial_kwargs", None)  # a mapped operator: its arguments are kept aside
        operator_class = task.operator_class if mapped is not None else type(task)
        if "storage_conn_id" in inspect.signature(operator_class.__init__).parameters:
            readers[task_id] = mapped.get("storage_conn_id") if mapped is not None else task.storage_conn_id
    assert f"g.{'load' if vendor == 'gainsight_px' else 'upload'}" in readers, sorted(group.children)
    assert set(readers.values()) == {"lake"}, readers


def test_a_good_declaration_expands_into_the_stages():
    group = declare()
    assert sorted(group.children) == ["g.commit", "g.prepare", "g.report", "g.split", "g.upload"]
    group = declare(destination=Destination("mediarithmics"), mapping={"user_account_id": "id"}, mode="mirror")
    assert "g.create_import" in group.children
    group = declare(preview=True)
    assert sorted(group.children) == ["g.prepare", "g.preview", "g.preview_state"]
    assert SqlSource("c", "SELECT 1")
