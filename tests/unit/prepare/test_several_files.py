"""Several input files read as one (``engine.prepare`` given a list): records numbered within each
file, rejects and unreadable records naming their file, one layout required, and an incremental
sync whose snapshot survives files coming and going (real files, real prepares)."""

from __future__ import annotations

import csv
import json

import pytest

from airflow_provider_profiles.prepare.engine import prepare
from airflow_provider_profiles.prepare.errors import InputError
from airflow_provider_profiles.prepare.sync import SyncState
from airflow_provider_profiles.writers import get_writer


def writer():
    return get_writer("localytics", "changes", attributes={"name": "name"}, customer_id="id")


def write(path, lines, header="id,name"):
    path.write_text(header + "\n" + "".join(line + "\n" for line in lines))
    return str(path)


def rejects(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_rejects_name_the_file_and_the_record_within_it(tmp_path):
    first = write(tmp_path / "a.csv", ["1,a", ",no id", "3,c"])
    second = write(tmp_path / "b.csv", ["4,d", "1,again", "6,f,extra"])
    result = prepare([first, second], writer(), str(tmp_path / "out.ndjson"), rejects=str(tmp_path / "rejects.csv"))
    assert (result.read, result.written, result.rejected) == (6, 3, 3)
    rows = rejects(tmp_path / "rejects.csv")
    assert [(row["file"], row["record"], row["identifier"]) for row in rows if row["record"]] == [
        (first, "2", ""), (second, "2", "1")]  # the empty id; the id that a.csv had first
    unreadable = [row["reason"] for row in rows if not row["record"]]
    assert len(unreadable) == 1 and unreadable[0].startswith(f"{second}, line 4: "), unreadable
    with open(tmp_path / "out.ndjson") as handle:
        assert [json.loads(line)["customer_id"] for line in handle] == ["1", "3", "4"]  # file after file


def test_files_with_other_columns_are_refused_naming_the_file(tmp_path):
    first = write(tmp_path / "a.csv", ["1,a"])
    second = write(tmp_path / "b.csv", ["2,b"], header="id,full_name")
    with pytest.raises(InputError) as refused:
        prepare([first, second], writer(), str(tmp_path / "out.ndjson"))
    assert refused.value.file == second and "differ" in str(refused.value)


def test_a_sync_over_files_keeps_its_snapshot_when_a_file_is_added(tmp_path):
    state = SyncState(tmp_path / "state")
    first = write(tmp_path / "a.csv", ["1,a", "2,b"])
    second = write(tmp_path / "b.csv", ["3,c"])
    result = prepare([first, second], writer(), str(tmp_path / "1.ndjson"), sync=state, sync_run_key="run-1")
    assert (result.written, result.unchanged) == (3, 0)
    state.commit("run-1")
    third = write(tmp_path / "c.csv", ["4,d"])
    result = prepare([first, second, third], writer(), str(tmp_path / "2.ndjson"), sync=state, sync_run_key="run-2")
    assert (result.read, result.written, result.unchanged) == (4, 1, 3), result.notes
