"""Every example DAG loads without import errors; the main job (`make demo`) runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLES = Path(__file__).parents[2] / "example_dags"
EXPECTED = {
    "example_gainsight_px", "example_apsis_one", "example_localytics_profiles", "example_localytics_audiences",
    "example_mediarithmics", "profiles_end_to_end", "erase_profiles",
}


def test_every_example_dag_loads_without_errors(airflow_db):
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow < 3.2
        from airflow.models.dagbag import DagBag

    bag = DagBag(dag_folder=str(EXAMPLES))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == EXPECTED
    for dag_id in EXPECTED:
        dag = bag.get_dag(dag_id)
        assert dag.tags and "example" in dag.tags and dag.task_ids, dag_id


def test_demo_runs_the_end_to_end_dag_and_reconciles(tmp_path, capsys):
    from airflow_provider_profiles.testing.run_dag import main

    assert main(["profiles_end_to_end", "--dags-folder", str(EXAMPLES), "--home", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed[printed.index("report:") + len("report:"):printed.index("what the emulators hold")])
    assert set(report) == {"gainsight_px", "apsis_one", "localytics", "mediarithmics"}
    for vendor, counts in report.items():
        assert counts["read"] == 300, vendor  # the seeded table
        assert counts["read"] == counts["sent"] + counts["rejected_before_send"], vendor
        assert counts["rejected_before_send"] >= 3, vendor  # rows without an id (or, for Apsis, a valid email)
        assert counts["vendor_succeeded"] > 250, vendor
    # what the vendors hold: each sent profile exactly once
    assert '"users": 294' in printed and '"profiles": 295' in printed and '"total_success": 297' in printed


def test_erase_profiles_runs_under_airflow_dags_test(tmp_path, capsys):
    """The erasure example through ``airflow dags test`` (the demo runner) against empty emulators:
    every id is not found, every task succeeds, and mediarithmics gets one deletion execution."""
    from airflow_provider_profiles.testing.run_dag import main

    assert main(["erase_profiles", "--dags-folder", str(EXAMPLES), "--home", str(tmp_path / "erase")]) == 0
    printed = capsys.readouterr().out
    assert "erase_profiles: success" in printed
    for task_id in ("gainsight_px", "apsis_one", "localytics", "mediarithmics", "summary"):
        assert f"success    {task_id}" in printed, task_id
    assert '"executions": {"SUCCEEDED": 1}, "total_success": 3' in printed
