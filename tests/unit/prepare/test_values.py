"""Values through the real prepare path: dates, missing columns, odd values, rejects, progress.

Every test writes a real input file and runs it through ``prepare_file`` (or the operator), then
reads the vendor file and the rejects file back.
"""

from __future__ import annotations

import csv
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_profiles.writers import get_writer
from airflow_provider_profiles.prepare.mapping import FieldMapping
from tests.unit.prepare.prepared import representation_of
from airflow_provider_profiles.prepare.engine import prepare as prepare_file
from airflow_provider_profiles.prepare.errors import InputError
from airflow_provider_profiles.operators.prepare import ProfilesFileTransformOperator, SqlToProfilesFileOperator


def rejects_of(path):
    """(record, identifier, reason) rows: record 1 is the first data row."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [(int(r["record"]), r["identifier"], r["reason"]) for r in csv.DictReader(handle)]


def _no_constant(name):
    raise ValueError(f"invalid JSON constant {name}")


def strict_ndjson(path):
    """Each line parsed as strict JSON: NaN / Infinity are not JSON."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line, parse_constant=_no_constant) for line in handle]


def apsis(columns=("email", "born")):
    return get_writer("apsis_one", columns=list(columns), keyspace_field="email", keyspace="email")


def gainsight(**mapping):
    return get_writer("gainsight_px", entity="USER", field_mapping={"identifyId": "id", **mapping})


def csv_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- 3. dates -------------------------------------------------------------------------------------


def test_compact_dates_are_dates_for_every_vendor(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,mail,born\nu1,a@x.io,20240115\nu2,b@x.io,20241301\n")
    mapping = FieldMapping({"email": "mail", "born": {"source": "born", "type": "date"}}, representation=representation_of("apsis_one"))
    result = prepare_file(str(source), apsis(), str(tmp_path / "a.csv"), mapping=mapping, rejects=str(tmp_path / "ra.csv"))
    assert (result.written, result.rejected) == (1, 1)
    assert csv_rows(tmp_path / "a.csv") == [{"email": "a@x.io", "born": "2024-01-15"}]
    [(line, identifier, reason)] = rejects_of(tmp_path / "ra.csv")
    assert (line, identifier) == (2, "b@x.io") and "20241301" in reason and "column 'born'" in reason

    mapping = FieldMapping({"id": "id", "signup": {"source": "born", "type": "date"}}, representation=representation_of("gainsight_px"))
    prepare_file(str(source), gainsight(signUpDate="signup"), str(tmp_path / "g1.ndjson"), mapping=mapping)
    assert strict_ndjson(tmp_path / "g1.ndjson")[0] == {"identifyId": "u1", "signUpDate": 1705276800000}

    # the Gainsight writer alone (no mapping) reads 20240115 as a date too, not as milliseconds
    prepare_file(str(source), gainsight(signUpDate="born"), str(tmp_path / "g2.ndjson"), rejects=str(tmp_path / "rg.csv"))
    assert strict_ndjson(tmp_path / "g2.ndjson") == [{"identifyId": "u1", "signUpDate": 1705276800000}]
    assert [line for line, _, _ in rejects_of(tmp_path / "rg.csv")] == [2]


def test_epoch_seconds_are_never_taken_for_milliseconds(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("mail,seen\na@x.io,1700000000\nb@x.io,1700000000000\n")
    guess = FieldMapping({"email": "mail", "born": {"source": "seen", "type": "datetime"}}, representation=representation_of("apsis_one"))
    result = prepare_file(str(source), apsis(), str(tmp_path / "a.csv"), mapping=guess, rejects=str(tmp_path / "r.csv"))
    assert (result.written, result.rejected) == (1, 1)
    assert csv_rows(tmp_path / "a.csv") == [{"email": "b@x.io", "born": "2023-11-14T22:13:20Z"}]
    [(line, identifier, reason)] = rejects_of(tmp_path / "r.csv")
    assert (line, identifier) == (1, "a@x.io")
    assert "seconds" in reason and "unit" in reason and "column 'seen'" in reason

    seconds = FieldMapping({"email": "mail", "born": {"source": "seen", "type": "datetime", "unit": "s"}}, representation=representation_of("apsis_one"))
    source.write_text("mail,seen\na@x.io,1700000000\n")
    prepare_file(str(source), apsis(), str(tmp_path / "s.csv"), mapping=seconds)
    assert csv_rows(tmp_path / "s.csv") == [{"email": "a@x.io", "born": "2023-11-14T22:13:20Z"}]


def test_mediarithmics_and_gainsight_timestamps_in_seconds_are_rejected(tmp_path):
    source = tmp_path / "in.ndjson"
    source.write_text(
        json.dumps({"user_agent_id": "vec:1", "ts": 1700000000}) + "\n"
        + json.dumps({"user_agent_id": "vec:2", "ts": 1700000000000}) + "\n"
    )
    result = prepare_file(str(source), get_writer("mediarithmics", "USER_ACTIVITY"), str(tmp_path / "m.ndjson"),
                          rejects=str(tmp_path / "rm.csv"))
    assert (result.written, result.rejected) == (1, 1)
    assert strict_ndjson(tmp_path / "m.ndjson")[0]["$ts"] == 1700000000000
    [(line, identifier, reason)] = rejects_of(tmp_path / "rm.csv")
    assert (line, identifier) == (1, "user_agent_id=vec:1") and "seconds" in reason

    source.write_text(json.dumps({"id": "u1", "seen": 1700000000}) + "\n")
    result = prepare_file(str(source), gainsight(lastSeenDate="seen"), str(tmp_path / "g.ndjson"),
                          rejects=str(tmp_path / "rg.csv"))
    assert (result.written, result.rejected) == (0, 1)
    assert "seconds" in rejects_of(tmp_path / "rg.csv")[0][2]


def test_an_out_of_range_epoch_rejects_its_row_only(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("mail,seen\na@x.io,1700000000000\nb@x.io,100000000000000000\nc@x.io,-99999999999999999999\n")
    mapping = FieldMapping({"email": "mail", "born": {"source": "seen", "type": "datetime", "unit": "ms"}}, representation=representation_of("apsis_one"))
    result = prepare_file(str(source), apsis(), str(tmp_path / "a.csv"), mapping=mapping, rejects=str(tmp_path / "r.csv"))
    assert (result.written, result.rejected) == (1, 2)
    rejects = rejects_of(tmp_path / "r.csv")
    assert [(line, identifier) for line, identifier, _ in rejects] == [(2, "b@x.io"), (3, "c@x.io")]
    assert all("out of range" in reason and "column 'seen'" in reason for _, _, reason in rejects)

    source = tmp_path / "in.ndjson"
    source.write_text(json.dumps({"id": "u1", "seen": 10**20}) + "\n" + json.dumps({"id": "u2", "seen": 1700000000000}) + "\n")
    result = prepare_file(str(source), gainsight(lastSeenDate="seen"), str(tmp_path / "g.ndjson"), rejects=str(tmp_path / "rg.csv"))
    assert (result.written, result.rejected) == (1, 1)
    assert "out of range" in rejects_of(tmp_path / "rg.csv")[0][2]


# --- 4. a column the writer needs is missing --------------------------------------------------------


def test_apsis_and_gainsight_check_their_columns_before_writing(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("email,town\na@x.io,Oslo\n")
    with pytest.raises(InputError, match=r"in.csv, line 1: .*'city'"):
        prepare_file(str(source), apsis(["email", "city"]), str(tmp_path / "a.csv"))
    assert not (tmp_path / "a.csv").exists()

    mapping = FieldMapping({"email": "email", "town": "town"}, representation=representation_of("apsis_one"))
    with pytest.raises(InputError, match=r"in.csv: .*'city'"):
        prepare_file(str(source), apsis(["email", "city"]), str(tmp_path / "b.csv"), mapping=mapping)
    assert not (tmp_path / "b.csv").exists()

    with pytest.raises(InputError, match=r"in.csv, line 1: .*'city'"):
        prepare_file(str(source), gainsight(**{"location.city": "city"}), str(tmp_path / "g.ndjson"))
    assert not (tmp_path / "g.ndjson").exists()


# --- 5. values that are not what they look like ---------------------------------------------------


def test_binary_parquet_strings_are_decoded_or_rejected(tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({
        "id": pa.array([b"1", b"2", b"3"], pa.binary()),
        "name": pa.array([b"Ann", b"\xff\xfe", "Zoë".encode()], pa.binary()),
    }), source)
    writer = get_writer("localytics", "changes", customer_id="id", attributes={"name": "name"})
    result = prepare_file(str(source), writer, str(tmp_path / "l.ndjson"), rejects=str(tmp_path / "r.csv"))
    assert (result.written, result.rejected) == (2, 1)
    assert [(r["customer_id"], r["changes"][0]["value"]) for r in strict_ndjson(tmp_path / "l.ndjson")] == [
        ("1", "Ann"), ("3", "Zoë")
    ]
    [(line, identifier, reason)] = rejects_of(tmp_path / "r.csv")
    assert (line, identifier) == (2, "2") and "not valid UTF-8" in reason and "name" in reason

    mapping = FieldMapping({"email": {"source": "id", "pattern": r"\d"}, "born": "name"}, representation=representation_of("apsis_one"))
    result = prepare_file(str(source), apsis(), str(tmp_path / "a.csv"), mapping=mapping, rejects=str(tmp_path / "ra.csv"))
    assert "b'" not in (tmp_path / "a.csv").read_text()


def test_database_blobs_and_infinite_reals_through_the_sql_operator(tmp_path, airflow_connection):
    pytest.importorskip("airflow.providers.sqlite", reason="needs apache-airflow-providers-sqlite")
    import sqlite3

    with sqlite3.connect(tmp_path / "crm.db") as db:
        db.execute("CREATE TABLE users (id BLOB, name BLOB, score REAL)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?)", [
            (b"u1", b"Ann", 1.5), (b"u2", b"\xff", 2.0), (b"u3", b"Bo", float("inf")), (b"u4", "Zoë".encode(), None),
        ])
    airflow_connection("crm_values", "sqlite", host=str(tmp_path / "crm.db"))
    operator = SqlToProfilesFileOperator(
        task_id="prepare", conn_id="crm_values", sql="SELECT id, name, score FROM users ORDER BY id",
        vendor="mediarithmics", writer_format="USER_PROFILE", output_path=str(tmp_path / "out.ndjson"),
        mapping={"user_agent_id": "id", "name": "name", "score": {"source": "score", "type": "number"}},
        max_rejected_ratio=None,  # half the rows are rejected on purpose
    )
    result = operator.execute({})
    assert (result["read"], result["written"], result["rejected"]) == (4, 2, 2)
    lines = strict_ndjson(tmp_path / "out.ndjson")
    assert [(line["user_agent_id"], line["user_profile"]["name"]) for line in lines] == [("u1", "Ann"), ("u4", "Zoë")]
    rejects = rejects_of(result["rejects"])
    assert [(line, identifier) for line, identifier, _ in rejects] == [(2, "user_agent_id=u2"), (3, "user_agent_id=u3")]
    assert "not valid UTF-8" in rejects[0][2] and "name" in rejects[0][2]
    assert "finite" in rejects[1][2] and "score" in rejects[1][2]


def test_infinite_and_nan_values_never_reach_ndjson(tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({
        "user_agent_id": ["vec:1", "vec:2", "vec:3", "vec:4"],
        "score": [1.5, float("inf"), float("nan"), 2.0],
        "meta": ['{"a": 1}', "{}", "{}", '{"a": NaN}'],
    }), source)
    mapping = FieldMapping({"user_agent_id": "user_agent_id", "score": "score", "meta": {"source": "meta", "type": "json"}},
                           representation=representation_of("mediarithmics"))
    expected = {"raw": ["vec:1", "vec:3", "vec:4"], "mapped": ["vec:1", "vec:3"]}  # raw meta is just text
    for name, options in {"raw": {}, "mapped": {"mapping": mapping}}.items():
        result = prepare_file(str(source), get_writer("mediarithmics", "USER_PROFILE"), str(tmp_path / f"{name}.ndjson"),
                              rejects=str(tmp_path / f"{name}.csv"), **options)
        lines = strict_ndjson(tmp_path / f"{name}.ndjson")  # raises on NaN / Infinity
        assert [line["user_agent_id"] for line in lines] == expected[name]
        assert result.written == len(expected[name]) and result.written + result.rejected == 4
        assert lines[1]["user_profile"].get("score") is None  # NaN is a missing value
        rejected = rejects_of(tmp_path / f"{name}.csv")
        assert rejected[0][:2] == (2, "user_agent_id=vec:2") and "score" in rejected[0][2]
        if name == "mapped":
            assert rejected[1][:2] == (4, "user_agent_id=vec:4") and "meta" in rejected[1][2]


def test_numeric_ids_are_canonical_for_the_check_and_the_output(tmp_path):
    source = tmp_path / "in.ndjson"
    source.write_text('{"id": 1, "plan": "a"}\n{"id": 1.0, "plan": "b"}\n{"id": 2.0, "plan": "c"}\n')
    writer = get_writer("localytics", "changes", customer_id="id", attributes={"plan": "plan"})
    result = prepare_file(str(source), writer, str(tmp_path / "l.ndjson"), rejects=str(tmp_path / "rl.csv"))
    assert (result.written, result.rejected) == (2, 1)
    assert [r["customer_id"] for r in strict_ndjson(tmp_path / "l.ndjson")] == ["1", "2"]
    assert rejects_of(tmp_path / "rl.csv")[0][:2] == (2, "1")

    result = prepare_file(str(source), gainsight(plan="plan"), str(tmp_path / "g.ndjson"), rejects=str(tmp_path / "rg.csv"))
    assert (result.written, result.rejected) == (2, 1)
    assert [r["identifyId"] for r in strict_ndjson(tmp_path / "g.ndjson")] == ["1", "2"]


def test_gainsight_sends_the_identifier_it_checked(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,plan\n u1 ,a\nu1,b\n")
    result = prepare_file(str(source), gainsight(plan="plan"), str(tmp_path / "g.ndjson"), rejects=str(tmp_path / "r.csv"))
    assert (result.written, result.rejected) == (1, 1)
    assert strict_ndjson(tmp_path / "g.ndjson") == [{"identifyId": "u1", "plan": "a"}]
    assert rejects_of(tmp_path / "r.csv")[0][:2] == (2, "u1")


def test_localytics_increment_out_of_range_is_rejected(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text(f"id,logins\n1,1e309\n2,{'9' * 40}\n3,5\n4,inf\n")
    writer = get_writer("localytics", "changes", customer_id="id", attributes={"logins": {"attr": "logins", "op": "increment"}})
    result = prepare_file(str(source), writer, str(tmp_path / "l.ndjson"), rejects=str(tmp_path / "r.csv"))
    assert (result.written, result.rejected) == (1, 3)
    assert strict_ndjson(tmp_path / "l.ndjson") == [{"customer_id": "3", "changes": [{"op": "increment", "attr": "logins", "value": 5}]}]
    assert [(line, reason.split(":")[0]) for line, _, reason in rejects_of(tmp_path / "r.csv")] == [
        (1, "logins"), (2, "logins"), (4, "logins")
    ]


# --- 16. rejects file that a person opens, progress of a long prepare ------------------------------


def test_formulas_are_neutralised_in_the_rejects_file_only(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text('email,born\n"=HYPERLINK(""http://evil"",""x"")",2024-01-01\n+1,2024-01-01\na@x.io,=1+1\n')
    result = prepare_file(str(source), apsis(), str(tmp_path / "a.csv"), rejects=str(tmp_path / "r.csv"))
    assert (result.written, result.rejected) == (1, 2)
    assert csv_rows(tmp_path / "a.csv") == [{"email": "a@x.io", "born": "=1+1"}]  # vendor data as it was
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert "'=HYPERLINK(\"http://evil\",\"x\")" in cells and "'+1" in cells


def test_a_prepare_logs_its_progress(tmp_path, caplog):
    source = tmp_path / "in.csv"
    source.write_text("id,name,city\n" + "".join(f"{i},n{i},c{i}\n" for i in range(5000)))
    operator = ProfilesFileTransformOperator(
        task_id="prepare", source_path=str(source), vendor="localytics",
        writer_options={"customer_id": "id", "attributes": {"name": "name", "city": "city"}},
        output_path=str(tmp_path / "out.ndjson"), progress_interval=0,
    )
    with caplog.at_level(logging.INFO, logger="airflow_provider_profiles"):
        operator.execute({})
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("prepare progress")]
    assert progress, [r.getMessage() for r in caplog.records]
    assert "5,000 rows" in progress[-1] and "rows/s" in progress[-1] and "100%" in progress[-1]
    assert any("ETA" in line for line in progress)


def test_set_path_takes_a_dotted_name_or_its_parts():
    """One dotted-path setter (the mapping passed parts, the Gainsight PX writer a dotted name)."""
    from airflow_provider_profiles.prepare.values import set_path

    record: dict = {}
    set_path(record, "location.city", "Oslo")
    set_path(record, ("location", "coordinates", "latitude"), 59.9)
    set_path(record, "plan", "pro")
    assert record == {"location": {"city": "Oslo", "coordinates": {"latitude": 59.9}}, "plan": "pro"}
