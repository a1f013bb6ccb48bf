"""Every example DAG loads without import errors; the demo runner (`make demo`) runs a DAG end to end.

profiles_end_to_end itself runs once per suite, in the e2e tier (tests/e2e/test_examples_e2e.py:
real scheduler and triggerer, the same counts and more).
"""

from __future__ import annotations

import runpy
from pathlib import Path

from airflow_provider_profiles.vendors import VENDORS

EXAMPLES = Path(__file__).parents[3] / "example_dags"
DEMO_RUNNER = Path(__file__).parents[3] / "scripts" / "run_dag.py"  # `make demo`; not in the package
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


def test_erase_profiles_runs_under_airflow_dags_test(tmp_path, capsys):
    """The erasure example through ``airflow dags test`` (the demo runner) against empty emulators:
    every id is not found, every task succeeds, and mediarithmics gets one deletion execution."""
    main = runpy.run_path(str(DEMO_RUNNER))["main"]

    assert main(["erase_profiles", "--dags-folder", str(EXAMPLES), "--home", str(tmp_path / "erase")]) == 0
    printed = capsys.readouterr().out
    assert "erase_profiles: success" in printed
    for task_id in (*VENDORS, "summary"):
        assert f"success    {task_id}" in printed, task_id
    assert '"executions": {"SUCCEEDED": 1}, "total_success": 3' in printed
