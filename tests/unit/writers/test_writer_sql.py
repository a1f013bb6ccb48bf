"""Each writer's SQL (``line_sql``, ``key_sql``) says what its Python ``encode``/``identifier`` says.

The engine writes with the SQL where a writer gives it; these tests hold the two equal, row by
row, on hostile values: the same JSON record (types included) or CSV cells, the same reject
reason, the same identifier.
"""

from __future__ import annotations

import csv
import io
import json

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_profiles.writers import get_writer
from airflow_provider_profiles.prepare.writer import RowRejected
from airflow_provider_profiles.prepare.values import is_missing
from airflow_provider_profiles.prepare import sql

HOSTILE_TEXT = ["plain", " padded ", "tab\there", "new\nline", 'quote "q"', "it's", "back\\slash", "comma, here",
                "é ü 中 😀", "\u2028sep", "\x01ctl", "x" * 255, "y" * 256, "\u00a0nbsp\u00a0", "=1+1", "", None]


def _python(writer, row):
    try:
        return writer.encode(row), None
    except RowRejected as error:
        return None, error.reason


def _sql(writer, table: pa.Table):
    connection = duckdb.connect()
    sql.register_functions(connection)
    connection.register("input", table)
    columns = sql.Columns({name: kind for name, kind, *_ in connection.execute("DESCRIBE input").fetchall()})
    line, reason, *exact = writer.line_sql(columns)
    exact = exact[0] if exact else "true"
    key = writer.key_sql(columns) or "NULL"
    return connection.execute(
        f"SELECT {reason}, CASE WHEN ({reason}) IS NULL THEN {line} END, {key}, {exact} FROM input").fetchall()


def _same_record(python_line: str, sql_line: str, extension: str) -> bool:
    if extension == "csv":
        return list(csv.reader(io.StringIO(python_line))) == list(csv.reader(io.StringIO(sql_line)))
    # JSON equal with types: 1 and 1.0 and true differ
    return json.dumps(json.loads(python_line)) == json.dumps(json.loads(sql_line)) and sql_line.endswith("\n")


def _missing_as_null(table: pa.Table) -> pa.Table:
    """What the engine hands a writer: blank text and NaN are NULL (``values.is_missing``)."""
    columns = {}
    for name in table.column_names:
        values = table.column(name).to_pylist()
        columns[name] = pa.array([None if is_missing(v) else v for v in values], table.schema.field(name).type)
    return pa.table(columns)


def assert_sql_matches(writer, table: pa.Table) -> int:
    """Returns how many rows the SQL was exact for (the others are left to ``encode``)."""
    table = _missing_as_null(table)
    rows = table.to_pylist()
    exact_rows = 0
    for row, (reason, line, key, exact) in zip(rows, _sql(writer, table)):
        mapped = {k: v for k, v in row.items()}
        if not exact:
            continue
        exact_rows += 1
        expected_line, expected_reason = _python(writer, mapped)
        assert reason == expected_reason, (row, reason, expected_reason)
        if expected_line is not None:
            assert _same_record(expected_line, line, writer.extension), (row, line, expected_line)
        assert key == writer.identifier(mapped), (row, key, writer.identifier(mapped))
    return exact_rows


def _strings(**columns):
    return pa.table({name: pa.array(values, pa.string()) for name, values in columns.items()})


def test_mediarithmics_user_profile_sql_matches_encode():
    writer = get_writer("mediarithmics", "USER_PROFILE")
    count = len(HOSTILE_TEXT)
    table = pa.table({
        "user_account_id": pa.array(HOSTILE_TEXT, pa.string()),
        "compartment_id": pa.array(["1000", " 7 ", None] * (count // 3) + [None] * (count % 3), pa.string()),
        "email_hash": pa.array([None] * (count - 2) + ["h1", "h2"], pa.string()),
        "city": pa.array(list(reversed(HOSTILE_TEXT)), pa.string()),
        "score": pa.array([1, None, -5, 2**62] * (count // 4) + [0] * (count % 4), pa.int64()),
        "vip": pa.array([True, False, None] * (count // 3) + [None] * (count % 3), pa.bool_()),
        "ratio": pa.array([0.5, 1e16, float("inf"), None] * (count // 4) + [2.0] * (count % 4), pa.float64()),
    })
    assert_sql_matches(writer, table)


def test_mediarithmics_rows_without_profile_values_or_identifier():
    writer = get_writer("mediarithmics", "USER_PROFILE")
    table = _strings(user_account_id=["a", None, None, "b"], user_agent_id=[None, None, "ag", "ag2"], city=[None, "x", "y", "z"])
    assert_sql_matches(writer, table)


def test_mediarithmics_delete_sql_matches_encode():
    writer = get_writer("mediarithmics", "USER_PROFILE", operation="DELETE")
    assert_sql_matches(writer, _strings(user_account_id=["a", None, " b "], email_hash=[None, None, "h"]))


def test_localytics_assign_sql_matches_encode():
    writer = get_writer("localytics", "changes", customer_id="id", attributes={"city": "city", "n": "count"})
    count = len(HOSTILE_TEXT)
    table = pa.table({
        "id": pa.array(HOSTILE_TEXT, pa.string()),
        "city": pa.array(list(reversed(HOSTILE_TEXT)), pa.string()),
        "n": pa.array([1, None, 2**63 - 1] * (count // 3) + [None] * (count % 3), pa.int64()),
    })
    assert_sql_matches(writer, table)


def test_localytics_other_ops_have_no_sql():
    writer = get_writer("localytics", "changes", customer_id="id", attributes={"n": ("n", "increment")})
    assert writer.line_sql(sql.Columns({"id": "VARCHAR", "n": "VARCHAR"})) is None


@pytest.mark.parametrize("keyspace", ["email", "mobile", None])
def test_apsis_one_csv_sql_matches_encode(keyspace):
    writer = get_writer("apsis_one", "csv", columns=["key", "city", "vip", "n"], keyspace_field="key", keyspace=keyspace)
    count = len(HOSTILE_TEXT)
    keys = ["a@b.co", " a@b.co ", "a@b", "ab.co", "a b@c.de", "a\u00a0b@c.de", "+4670123456", "12345", "it's@x.y",
            "é@x.io", "a@b.c\n", "", None, "a@@b.c", "a@b.c.d", "+12 3456", "123456789012345"]
    table = pa.table({
        "key": pa.array(keys[:count] + ["z@z.z"] * (count - len(keys)), pa.string()),
        "city": pa.array(HOSTILE_TEXT, pa.string()),
        "vip": pa.array([True, False, None] * (count // 3) + [None] * (count % 3), pa.bool_()),
        "n": pa.array([1, None, -3] * (count // 3) + [None] * (count % 3), pa.int64()),
    })
    assert_sql_matches(writer, table)


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=300)), min_size=1, max_size=20))
def test_generated_text_gives_the_same_lines(rows):
    ids, values = zip(*rows)
    table = _strings(id=list(ids), city=list(values))
    assert_sql_matches(get_writer("localytics", "changes", customer_id="id", attributes={"city": "city"}), table)
    table = _strings(user_account_id=list(ids), city=list(values))
    assert_sql_matches(get_writer("mediarithmics", "USER_PROFILE"), table)
    table = _strings(key=list(ids), city=list(values))
    assert_sql_matches(get_writer("apsis_one", "csv", columns=["key", "city"], keyspace_field="key", keyspace="email"), table)


GAINSIGHT_TEXT = {
    "date": ["2024-01-15", " 2024-01-15T10:00:00Z ", "2024-01-15 10:00:00+02:00", "2024-01-15T23:59", "1969-12-31T23:59:59Z",
             "0001-01-01", "9999-12-31T23:59:59Z", "2023-02-30", "2024-01-15T24:00", "15/01/2024", "20240115", "1700000000000",
             "2024-01-15T10:00:00.5Z", "", None],
    "number": ["42", " -7 ", "+3", "4.0", "4.5", "-0", "-0.0", "0.000001", "123456789012345.5", "1e3", "abc", "inf", "nan",
               "1_000", "99999999999999999999", None],
    "integer": ["42", "-0", "4.0", "4.5", "abc", "123456789012345", "1234567890123456", None],
    "boolean": ["true", " Yes ", "N", "1", "0", "maybe", "", None],
}


@pytest.mark.parametrize("type_name", sorted(GAINSIGHT_TEXT))
def test_gainsight_px_sql_matches_encode_where_exact(type_name):
    values = GAINSIGHT_TEXT[type_name]
    writer = get_writer("gainsight_px", "records", entity="USER",
                        field_mapping={"identifyId": "id", "email": "email", "location.city": "city",
                                       "customAttributes.value": "value"},
                        field_types={"customAttributes.value": type_name})
    emails = ["a@b.c", "no-at", None] * len(values)
    table = _strings(id=[f" u{i} " if i % 4 else None for i in range(len(values))], email=emails[:len(values)],
                     city=[None if i % 3 else "Oslo" for i in range(len(values))], value=values)
    assert assert_sql_matches(writer, table) >= 1  # the SQL is used, not only encode()


@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(["date", "number", "integer", "boolean"]).flatmap(
    lambda kind: st.tuples(st.just(kind), st.from_regex(r"[ +\-]?[0-9]{1,16}([.:T -][0-9]{0,3}){0,4}Z?", fullmatch=True))),
    min_size=1, max_size=10))
def test_gainsight_px_generated_numbers_and_dates(cases):
    for type_name, value in cases:
        writer = get_writer("gainsight_px", "records", entity="USER", field_mapping={"identifyId": "id", "custom.v": "v"},
                            field_types={"custom.v": type_name})
        assert_sql_matches(writer, _strings(id=["u1"], v=[value]))


def test_gainsight_px_sql_words_the_common_rejects():
    """Values ``build`` surely refuses (an empty identifier, an email without @, a word that is no
    boolean, text with no digit for a number, a date that is not ISO 8601) are rejected by the SQL
    with ``build``'s reason, the first refused field deciding; others stay with ``encode``."""
    writer = get_writer("gainsight_px", "records", entity="USER",
                        field_mapping={"identifyId": "id", "email": "email", "signUpDate": "day", "score": "score",
                                       "customAttributes.vip": "vip", "numberOfVisits": "visits"},
                        field_types={"customAttributes.vip": "boolean"})
    rows = {  # id, email, day, score, vip, visits; then whether SQL gives the outcome
        "fits": (("u1", "a@b.c", "2024-01-15", "4.5", "yes", "3"), True),
        "no id": ((" ", "no-at", "15/01/2024", "abc", "maybe", "x"), True),
        "no @": (("u1", "no-at", "15/01/2024", "abc", "maybe", "x"), True),
        "no @, quoted": (("u1", "say \"x\"", None, None, None, None), True),
        "no @, both quotes": (("u1", "it's \"x\"", None, None, None, None), False),
        "d/m/y": (("u1", "a@b.c", " 15/01/2024 ", "abc", "maybe", "x"), True),
        "no such day": (("u1", None, "2023-02-30", "abc", None, None), True),
        "year 0": (("u1", None, "0000-01-01", "abc", None, None), True),
        "year 0, alone": (("u1", None, "0000-01-01", None, None, None), True),
        "year 0, a moment": (("u1", None, "0000-01-01T10:00:00Z", None, None, None), False),
        "no digit": (("u1", None, None, " abc ", "maybe", None), True),
        "inf": (("u1", None, None, "-Infinity", "maybe", None), False),
        "no word": (("u1", None, None, None, " Maybe ", "x"), True),
        "no word, not ASCII": (("u1", None, None, None, "jä", "x"), False),
        "integer": (("u1", None, None, None, None, "x"), True),
        "integer, fraction": (("u1", None, None, None, None, "4.5"), False),
        "hour 24": (("u1", None, "2024-01-15T24:00", "abc", None, None), False),
    }
    names = ["id", "email", "day", "score", "vip", "visits"]
    table = _strings(**{name: [values[i] for values, _ in rows.values()] for i, name in enumerate(names)})
    table = _missing_as_null(table)
    for (case, (values, expected)), (reason, line, key, exact), row in zip(rows.items(), _sql(writer, table), table.to_pylist()):
        assert bool(exact) == expected, case
        python_line, python_reason = _python(writer, row)
        if exact:
            assert reason == python_reason, (case, reason, python_reason)
            assert (line is None) == (python_line is None), case
        elif case != "fits":
            assert python_reason is not None or python_line is not None, case
    assert assert_sql_matches(writer, table) == sum(expected for _, expected in rows.values())
