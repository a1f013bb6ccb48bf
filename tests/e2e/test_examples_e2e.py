"""Every example DAG runs to success under the real scheduler, executor and triggerer; every deferrable
task really went through the triggerer; and each vendor emulator ends with exactly what the example
data files say: each valid profile imported exactly once, each bad row nowhere, one remote job per
expected job.

The expectations are written out from the data files in example_dags/data (which rows are bad and
why is in the comments), so a change in what the DAGs send fails here.
"""

from __future__ import annotations

import csv
import json
import re
import runpy
from pathlib import Path

import pytest

from tests.e2e.cluster import REPO
from tests.e2e.conftest import END_TO_END_DAG, EXAMPLE_DAGS, SECRETS, Phase, run_phase

pytestmark = pytest.mark.e2e

DATA = REPO / "example_dags" / "data"

# dag -> the tasks whose first try must defer (mapped ones as "task[i]"): every deferrable task of the examples
DEFERRED_TASKS = {
    "example_apsis_one": {"import_profiles", "wait_for_import"},
    "example_localytics_profiles": {"upload[0]"},
    "example_localytics_audiences": {"wait_for_import"},
    "example_mediarithmics": {"upload[0]", "upload[1]", "upload[2]"},
    "example_gainsight_px": set(),  # per-record REST: nothing to wait for
}


def rows(name: str) -> list[dict[str, str]]:
    with (DATA / name).open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def xcom(cluster, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1):
    found = cluster.query("select value from xcom where dag_id = ? and run_id = ? and task_id = ? and key = ? "
                          "and map_index = ?", dag_id, run_id, task_id, key, map_index)
    assert found, f"no XCom {key} of {dag_id}.{task_id}[{map_index}] in {run_id}"
    value = found[0][0]
    return json.loads(value) if isinstance(value, (str, bytes)) else value


# --- per vendor: what the emulator must hold after one run of the example -----------------------
def check_gainsight_px(cluster, phase: Phase) -> None:
    snapshot = phase.snapshots["gainsight_px"]
    source = rows("gainsight_px_users.csv")
    valid = [r for r in source if "@" in r["email"]]  # u-1005 has "not-an-email": rejected, never sent
    assert [r["id"] for r in source if r not in valid] == ["u-1005"]
    assert sorted(snapshot["users"]) == sorted(r["id"] for r in valid)
    assert snapshot["writes"] == {f"users/{r['id']}": 1 for r in valid}  # created once, never rewritten
    for r in valid:
        user = snapshot["users"][r["id"]]
        assert (user["email"], user["location"]["city"], user["customAttributes"]["plan"]) == \
            (r["email"], r["city"], r["plan"])
    # the export task wrote the paying users it listed back from the emulator
    run_dir = str(phase.runs["example_gainsight_px"]).replace(":", "_")
    exported = Path(cluster.env["PROFILES_DATA_DIR"], "gainsight_px", run_dir, "paying_users.csv")
    with exported.open(newline="") as file:
        assert sorted(r["identifyId"] for r in csv.DictReader(file)) == \
            sorted(r["id"] for r in valid if r["plan"] in ("pro", "enterprise"))
    with (exported.parent / "users.rejects.csv").open(newline="") as file:
        rejected = list(csv.DictReader(file))
    assert [r["identifier"] for r in rejected] == ["u-1005"] and "email" in rejected[0]["reason"].lower(), rejected


def check_apsis_one(cluster, phase: Phase) -> None:
    snapshot = phase.snapshots["apsis_one"]
    source = rows("apsis_one_profiles.csv")
    valid = [r for r in source if "@" in r["email"]]  # "not-an-email" is counted failed by Apsis
    # Two imports of the same file by design: import_profiles, and start_import + wait_for_import.
    imports = list(snapshot["imports"].values())
    assert len(imports) == 2, imports
    for imported in imports:
        assert imported["uploads"] == 1  # one file per import: no upload repeated
        assert imported["result"] == {"status": "completed", "profiles_found": len(source),
                                      "profiles_processed": len(valid), "profiles_failed": len(source) - len(valid)}
    profiles = snapshot["profiles"]["com.apsis1.sections.default"]
    assert sorted(profiles) == sorted(f"com.apsis1.keyspaces.email:{r['email']}" for r in valid)
    for r in valid:
        profile = profiles[f"com.apsis1.keyspaces.email:{r['email']}"]
        assert sorted(profile["attributes"].values()) == sorted([r["first_name"], r["city"]])
        assert bool(profile["tags"]) == (r["vip"] == "true")
        assert bool(profile["consents"]) == (r["newsletter"] == "1")
    run_id = phase.runs["example_apsis_one"]
    report = xcom(cluster, "example_apsis_one", run_id, "report")
    assert report["import_profiles"]["vendor_succeeded"] == len(valid)


def check_localytics_profiles(cluster, phase: Phase) -> None:
    snapshot = phase.snapshots["localytics"]
    source = rows("localytics_profiles.csv")
    # rejected before sending: a blank customer id, and c-1005's signup_date "not-a-date"
    valid = [r for r in source if r["customer_id"] and r["signup_date"] != "not-a-date"]
    profile_jobs = [j for j in snapshot["jobs"].values() if "target" in j]
    assert len(profile_jobs) == 1, profile_jobs  # one upload: the file is far under max_chunk_bytes
    assert profile_jobs[0]["status"] == "Completed"
    assert profile_jobs[0]["upload_statistics"]["successful_imports"] == len(valid)
    profiles = snapshot["profiles"]["org_id:60"]
    assert sorted(profiles) == sorted(r["customer_id"] for r in valid)
    for r in valid:
        # "increment" makes a second import visible: login_count would be doubled
        assert profiles[r["customer_id"]].get("login_count", 0) == int(r["logins_since_last_sync"]), r
        assert profiles[r["customer_id"]].get("signup_date") == r["signup_date"]
    report = xcom(cluster, "example_localytics_profiles", phase.runs["example_localytics_profiles"], "report")
    assert (report["read"], report["rejected_before_upload"], report["imported"]) == \
        (len(source), len(source) - len(valid), len(valid))


def check_localytics_audiences(cluster, phase: Phase) -> None:
    snapshot = phase.snapshots["localytics"]
    ids = [r["customer_id"] for r in rows("localytics_audience.csv")]
    members = sorted({i for i in ids if i})  # duplicates and the blank id are rejected before sending
    audience_jobs = [j for j in snapshot["jobs"].values() if "target" not in j]
    assert len(audience_jobs) == 1, audience_jobs
    lists = [a for a in snapshot["audiences"].values() if (a["app_id"], a["name"]) == ("app-1", "crm-vip")]
    assert len(lists) == 1 and lists[0]["version"] == 1 and lists[0]["record_count"] == len(members), lists
    report = xcom(cluster, "example_localytics_audiences", phase.runs["example_localytics_audiences"], "report")
    assert (report["in_list"], report["sent"]) == (len(members), len(members))


def check_mediarithmics(cluster, phase: Phase) -> None:
    snapshot = phase.snapshots["mediarithmics"]
    source = rows("mediarithmics_profiles.csv")

    def one_identifier(r):  # a user account id (its compartment optional: the default one), or an email hash
        return bool(r["user_account_id"]) + bool(r["email_hash"]) == 1

    valid = [r for r in source if one_identifier(r)]
    assert len(source) - len(valid) == 2  # crm-0007 (two ids), a row with none
    assert len(snapshot["document_imports"]) == 1  # one definition per run, reused by every chunk
    (definition,) = snapshot["document_imports"].values()
    executions = sorted(snapshot["executions"].values(), key=lambda e: int(e["id"]))
    # max_chunk_rows=6: 18 lines -> chunks of 6, 6, 6, one execution each (in any order), none repeated
    assert sorted(e["parameters"]["number_of_lines"] for e in executions) == [len(valid) - 12, 6, 6]
    assert all(e["status"] == "SUCCEEDED" and e["parameters"]["document_import_id"] == definition["id"]
               for e in executions), executions
    assert sum(e["result"]["total_success"] for e in executions) == len(valid)
    report = xcom(cluster, "example_mediarithmics", phase.runs["example_mediarithmics"], "report")
    assert (report["read"], report["sent"], report["imported"]) == (len(source), len(valid), len(valid))
    assert sorted(report["executions"]) == sorted(e["id"] for e in executions)


CHECKS = {
    "example_gainsight_px": check_gainsight_px,
    "example_apsis_one": check_apsis_one,
    "example_localytics_profiles": check_localytics_profiles,
    "example_localytics_audiences": check_localytics_audiences,
    "example_mediarithmics": check_mediarithmics,
}


def allowed_tries(cluster, phase: Phase, dag_id: str, tries: dict[str, int] | None = None) -> dict[str, int]:
    """Tries each task may take: ``tries`` (default 1), one more where Airflow's stale-success race hit it."""
    states = cluster.task_states(dag_id, phase.runs[dag_id])
    races = cluster.stale_success_races(dag_id, phase.runs[dag_id])
    return {task: (tries or {}).get(task, 1) + (task.partition("[")[0] in races) for task in states}


def check_task_states(cluster, phase: Phase, dag_id: str, max_tries: dict[str, int] | None = None) -> None:
    """Every task succeeded on its first try (or within ``max_tries[task]``)."""
    states = cluster.task_states(dag_id, phase.runs[dag_id])
    allowed = allowed_tries(cluster, phase, dag_id, max_tries)
    assert states and all(state == "success" and tries <= allowed[task]
                          for task, (state, tries) in states.items()), (states, allowed)


# --- tests -----------------------------------------------------------------------------------------
def test_every_example_dag_succeeds_first_try(cluster, example_runs):
    assert set(example_runs.runs) == set(EXAMPLE_DAGS) == set(CHECKS)
    assert example_runs.states == {dag_id: "success" for dag_id in EXAMPLE_DAGS}
    for dag_id in EXAMPLE_DAGS:
        check_task_states(cluster, example_runs, dag_id)


def test_every_deferrable_task_went_through_the_triggerer(cluster, example_runs):
    for dag_id, expected in DEFERRED_TASKS.items():
        deferred = cluster.deferred_tries(dag_id, example_runs.runs[dag_id])
        # the first try deferred (a retry after Airflow's stale-success race may defer again)
        assert {task: tries[0] for task, tries in deferred.items()} == dict.fromkeys(expected, 1), (dag_id, deferred)


@pytest.mark.parametrize("dag_id", EXAMPLE_DAGS)
def test_emulator_holds_each_profile_exactly_once(cluster, example_runs, dag_id):
    CHECKS[dag_id](cluster, example_runs)


@pytest.fixture(scope="module")
def end_to_end_run(cluster, example_runs) -> Phase:
    """profiles_end_to_end alone, on reset emulators (it writes to all four), after the examples."""
    if not (REPO / "example_dags" / f"{END_TO_END_DAG}.py").exists():
        pytest.skip(f"example_dags/{END_TO_END_DAG}.py is not there yet")
    return run_phase(cluster, "end_to_end", [END_TO_END_DAG])


def test_profiles_end_to_end(cluster, end_to_end_run):
    phase = end_to_end_run
    assert phase.states == {END_TO_END_DAG: "success"}
    check_task_states(cluster, phase, END_TO_END_DAG)
    deferred = cluster.deferred_tries(END_TO_END_DAG, phase.runs[END_TO_END_DAG])
    mapped = {task for task in cluster.task_states(END_TO_END_DAG, phase.runs[END_TO_END_DAG])
              if task.startswith(("apsis_one.upload[", "mediarithmics.upload[", "localytics.upload["))}
    assert set(deferred) == mapped, deferred
    report = xcom(cluster, END_TO_END_DAG, phase.runs[END_TO_END_DAG], "report")
    assert set(report) == {"gainsight_px", "apsis_one", "localytics", "mediarithmics"}
    for vendor, counts in report.items():
        assert counts["read"] == 300, vendor  # the seeded table
        assert counts["read"] == counts["rejected"] + counts["skipped"] + counts["sent"], vendor
        assert counts["sent"] == counts["vendor_succeeded"] + counts["vendor_failed"], vendor
        assert counts["rejected"] >= 3, vendor  # rows without an id (or, for Apsis, a valid email)
        assert counts["vendor_succeeded"] > 250, vendor
    snapshots = phase.snapshots
    # What each vendor holds is what the DAG's report says it sent and the vendor accepted, once.
    assert len(snapshots["gainsight_px"]["users"]) == report["gainsight_px"]["vendor_succeeded"]
    assert set(snapshots["gainsight_px"]["writes"].values()) == {1}
    apsis_imports = snapshots["apsis_one"]["imports"].values()
    assert len(apsis_imports) == len([t for t in mapped if t.startswith("apsis_one.upload[")])
    assert all(i["uploads"] == 1 and i["result"]["status"] == "completed" for i in apsis_imports)
    assert sum(i["result"]["profiles_found"] for i in apsis_imports) == report["apsis_one"]["sent"]
    localytics_jobs = list(snapshots["localytics"]["jobs"].values())
    assert len(localytics_jobs) == 1
    assert len(snapshots["localytics"]["profiles"]["org_id:60"]) == report["localytics"]["vendor_succeeded"]
    executions = snapshots["mediarithmics"]["executions"].values()
    assert len(snapshots["mediarithmics"]["document_imports"]) == 1
    assert len(executions) == len([t for t in mapped if t.startswith("mediarithmics.upload[")])
    assert sum(e["parameters"]["number_of_lines"] for e in executions) == report["mediarithmics"]["sent"]
    # what the vendors hold from the seeded table: each sent profile exactly once
    assert (len(snapshots["gainsight_px"]["users"]),
            sum(len(profiles) for profiles in snapshots["localytics"]["profiles"].values()),
            sum(e["result"]["total_success"] for e in executions)) == (294, 295, 297)


def test_end_to_end_tasks_depend_on_the_tasks_whose_xcom_they_template():
    if not (REPO / "example_dags" / f"{END_TO_END_DAG}.py").exists():
        pytest.skip(f"example_dags/{END_TO_END_DAG}.py is not there yet")
    namespace = runpy.run_path(str(REPO / "example_dags" / f"{END_TO_END_DAG}.py"))
    dag = namespace["dag"]
    for task in dag.tasks:
        for field in task.template_fields:
            pulled = re.findall(r"xcom_pull\(task_ids='([^']+)'", str(getattr(task, field, "")))
            for upstream in pulled:
                assert upstream in task.get_flat_relative_ids(upstream=True), \
                    f"{task.task_id}.{field} pulls {upstream}'s XCom but does not run after it"


def test_mediarithmics_example_runs_when_triggered_without_logical_date(cluster, example_runs):
    runs = cluster.trigger_many(["example_mediarithmics"], logical_date=False)
    assert cluster.wait_runs(runs, timeout=240) == {"example_mediarithmics": "success"}


def test_vendor_links_render_for_finished_tasks(cluster, end_to_end_run):
    """The task page's extra links, read from the api-server as the UI reads them: each points at the
    job on the host the connection names (the emulator here), never at production, and holds no secret."""
    run_id = end_to_end_run.runs[END_TO_END_DAG]

    def links(task_id: str, map_index: int = 0) -> dict:
        found = cluster.api_get(f"/dags/{END_TO_END_DAG}/dagRuns/{run_id}/taskInstances/{task_id}/links",
                                map_index=map_index)
        return found["extra_links"]

    mediarithmics = links("mediarithmics.upload")
    execution = mediarithmics["mediarithmics execution"]
    assert execution.startswith(cluster.emulators["mediarithmics"].url), mediarithmics
    assert re.search(r"/executions/\w+$", execution), execution
    assert mediarithmics["mediarithmics document import"].startswith(cluster.emulators["mediarithmics"].url)
    apsis = links("apsis_one.upload")["Apsis One import"]
    assert apsis and apsis.startswith(cluster.emulators["apsis_one"].url), apsis
    localytics = links("localytics.upload")["Localytics dashboard"]
    assert localytics and localytics.startswith(cluster.emulators["localytics"].url), localytics
    shown = json.dumps([mediarithmics, apsis, localytics])
    assert [secret for vendor in SECRETS.values() for secret in vendor.values() if secret in shown] == []
