"""The mapping compiled to DuckDB SQL gives what ``FieldMapping.apply`` gives, row for row.

Every test is differential: a real in-memory DuckDB table of hostile values goes through the
compiled SQL and, row by row, through the Python mapping (binary values decoded first, as the
Python pipeline does); the outcome must be the same value (compared as typed JSON, so that 1, 1.0
and true differ) or the same reject reason, word for word.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import pathlib
import re
import sys

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from airflow_provider_profiles import vendors
from airflow_provider_profiles.prepare.writer import RowRejected
from airflow_provider_profiles.prepare.mapping import FieldMapping
from tests.unit.prepare.prepared import representation_of
from airflow_provider_profiles.prepare.values import decode_row
from airflow_provider_profiles.prepare.sql import WHITESPACE
from airflow_provider_profiles.prepare.sql_mapping import compile_mapping, json_default, re2_pattern

HOSTILE = [
    None, "", " ", "\u00a0", "\u2003 7 \u2003", "\t\n", "\u200b", "\x1c", "\x85", "\u3000",
    "4.0", " 42 ", "4.5", "1e3", "1E+03", "1_000", "1__000", "abc", "inf", "-inf", "Infinity", "nan", " NaN ",
    str(2**63), str(-(2**63) - 1), "-0", "+5", "-5", "0x10", "1,000", "1e400", "-1e400", "1.", ".5", "5e-1",
    "00042", "1" * 38, "1" * 39, "9" * 40, "12345678901234567890", "123456789012345678901234567890.0",
    "4.000000000000000001", "1" * 400, "\u0664\u0662", "\u0664.\u0665", "\uff14\uff12", "²",
    "true", "TRUE", "False", "yes", "Y", "no", "N", "t", "f", "on", "maybe", "1", "0", " yes ",
    "2024-01-15", "2024-1-15", "2024-01-15T10", "2024-01-15T10:00", "2024-01-15 10:00", "2024-01-15T10:00:00Z",
    "2024-01-15T10:00:00.123456Z", "2024-01-15T10:00:00.5", "2024-01-15T10:00:00.1234567",
    "2024-01-15T10:00:00+02:00", "2024-01-15T23:30:00-02:00", "2024-01-15T10:00:00+24:00", "2024-01-15T10:00:00+0200",
    "2024-01-15T24:00:00", "2024-01-15T10:60", "2024-01-15T10:00:60", "2024-02-29", "2023-02-29", "2023-02-30",
    "0001-01-01", "0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-01:00", "9999-12-31", "0999-05-05",
    "2024-W03-1", "2024-015", "2024-01-15Z", "2024-01-15+02:00", "20240115T100000", "2024-01-15t10:00",
    "20240115", "20241301", "00000000", "+20240115", " 20240115 ", "1700000000", "1700000000000", "-1700000000000",
    "1700000000.5", "100000000000000000", "-99999999999999999999", "99999999999", "100000000000",
    "15/01/2024", "31/12/2024", "1/2/2024", " 1/2/2024", "29/02/2023", "29/02/2024", "15/01/2024 10:00", "15/1/0000",
    "a|b||c", "a, b,,c", " [1, 2] ", "[1, NaN]", '{"a": 1}', '{"a": NaN}', "[]", "[ ]", '["a", " b ", "", null]',
    "null", "x" * 300, "Chloé", "O'Brien, Jr.", 'say "hi"', "line\nbreak", "\\", "it's \"both\"",
    "user@example.com", "user@example", "userexample.com", "a b@c.de", "ab1", "free", "pro", "Pro",
]

SPECS = {
    "string": {"type": "string"},
    "string_checked": {"max_length": 5, "choices": ["free", "pro", "1", "True"]},
    "email": {"pattern": r"[^@\s]+@[^@\s]+\.[^@\s]+"},
    "anchored": {"pattern": r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}$"},
    "digits_pattern": {"type": "int", "pattern": r"\d{1,3}"},
    "lookahead": {"pattern": r"(?=.*\d)\w+"},  # no RE2 form: Python for every value
    "ignorecase": {"pattern": r"(?i)pro|free"},
    "required_default": {"required": True, "default": "unknown"},
    "required": {"type": "int", "required": True},
    "int": {"type": "int"},
    "int_default": {"type": "int", "default": "7", "choices": [1, 7, "42", True, 42.0]},
    "number": {"type": "number"},
    "number_default": {"type": "number", "default": 5},
    "number_choices": {"type": "number", "choices": [1, 4.5]},
    "bool": {"type": "bool"},
    "bool_pattern": {"type": "bool", "pattern": "True", "choices": [1]},
    "date": {"type": "date"},
    "datetime": {"type": "datetime"},
    "epoch_ms": {"type": "epoch_ms"},
    "iso_date": {"type": "iso_date"},
    "iso_datetime": {"type": "iso_datetime"},
    "date_s": {"type": "date", "unit": "s"},
    "datetime_ms": {"type": "datetime", "unit": "ms"},
    "epoch_s": {"type": "epoch_ms", "unit": "s"},
    "format": {"type": "date", "format": "%d/%m/%Y"},
    "format_time": {"type": "datetime", "format": "%d/%m/%Y %H:%M"},
    "format_compact": {"type": "epoch_ms", "format": "%Y%m%d"},
    "format_month_name": {"type": "date", "format": "%d %b %Y"},
    "list": {"type": "list", "separator": "|"},
    "list_comma": {"type": "list"},
    "json": {"type": "json"},
    "datetime_pattern": {"type": "datetime", "pattern": r"2024-.*", "max_length": 20},
}
VENDORS = [None, *vendors.VENDORS]


def _strict(value):
    """A JSON value with its kind kept: 1, 1.0 and true are three different things."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value)
    if isinstance(value, list):
        return ("list", [_strict(item) for item in value])
    if isinstance(value, dict):
        return ("dict", {key: _strict(item) for key, item in value.items()})
    return (type(value).__name__, value)


def _known_difference(python, sql) -> bool:
    """The two documented differences: integers beyond 128 bits, and NaN / infinite numbers inside
    list and json values (JSON cannot hold them; the Python path's writer rejects them later)."""
    if python[0] != "mapped" or sql[0] != "rejected":
        return False
    return re.search(r"(out of range for a 128-bit integer|\(JSON has no NaN or Infinity\)) \(column '[^']+'\)$", sql[1]) is not None


def _python_outcomes(mapping, rows):
    outcomes = []
    for row in rows:
        try:
            mapped = mapping.apply(decode_row(row))
        except RowRejected as error:
            outcomes.append(("rejected", error.reason))
            continue
        flat = {}
        for field in mapping.fields:
            value = mapped
            for part in field.path:
                value = value[part]
            flat[field.target] = _strict(json.loads(json.dumps(value, default=json_default)))
        outcomes.append(("mapped", flat))
    return outcomes


def differential(fields, table: pa.Table, vendor=None, casts=None):
    """Runs ``fields`` over ``table`` both ways; returns the number of rows compared."""
    mapping = FieldMapping(fields, representation=representation_of(vendor))
    connection = duckdb.connect()
    connection.register("arrow_input", table.append_column("__record", pa.array(range(table.num_rows), pa.int64())))
    selected = ", ".join(
        f'CAST("{name}" AS {casts[name]}) AS "{name}"' if casts and name in casts else f'"{name}"'
        for name in [*table.column_names, "__record"]
    )
    connection.execute(f"CREATE TABLE t AS SELECT {selected} FROM arrow_input")
    types = {name: kind for name, kind, *_ in connection.execute("DESCRIBE t").fetchall()}
    compiled = compile_mapping(mapping, types, connection)
    outputs = ", ".join(f'to_json("{f.target}")' for f in compiled.fields)
    result = connection.execute(
        f"SELECT {outputs}, __reason FROM ({compiled.select_sql('t')}) ORDER BY __record"
    ).fetchall()
    rows = connection.sql("SELECT * EXCLUDE (__record) FROM t ORDER BY __record").to_arrow_table().to_pylist()
    for row in rows:
        for name, kind in types.items():
            if kind == "JSON" and row.get(name) is not None:
                row[name] = json.loads(row[name])
    expected = _python_outcomes(mapping, rows)
    differences = []
    for row, wanted, got in zip(rows, expected, result):
        *texts, reason = got
        if reason is not None:
            outcome = ("rejected", reason)
        else:
            outcome = ("mapped", {f.target: _strict(json.loads(text or "null")) for f, text in zip(compiled.fields, texts)})
        if outcome != wanted and not _known_difference(wanted, outcome):
            differences.append({"row": row, "python": wanted, "sql": outcome})
    assert differences == [], (fields, vendor)
    return compiled, len(rows)


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_option_on_hostile_text(name, vendor):
    compiled, count = differential({"x": {"source": "v", **SPECS[name]}}, pa.table({"v": pa.array(HOSTILE, pa.string())}), vendor)
    assert count == len(HOSTILE)


def test_fields_without_an_sql_rule_are_named():
    mapping = {name: {"source": "v", **SPECS[name]} for name in ("lookahead", "list", "format_month_name", "int", "json")}
    compiled, _ = differential(mapping, pa.table({"v": pa.array(HOSTILE, pa.string())}))
    assert sorted(compiled.fallback) == ["format_month_name", "json", "lookahead"]


def test_the_first_rejecting_field_gives_the_reason():
    fields = {
        "id": {"source": "id", "required": True},
        "n": {"source": "n", "type": "int"},
        "born": {"source": "born", "type": "date"},
        "tag": {"const": "crm"},
        "flag": {"const": True},
        "meta.size": {"const": 3},
    }
    table = pa.table({
        "id": ["u1", "", "u3", "u4", " "],
        "n": ["4.5", "1", "x", "2", "3"],
        "born": ["bad", "2024-01-01", "bad", "20241301", "2024-01-01"],
    })
    differential(fields, table, vendor="gainsight_px")


TYPED = pa.table({
    "big": pa.array([0, 1, 2, -5, 20240115, 20241301, 1700000000, 1700000000000, 2**62, -(2**63), None], pa.int64()),
    "real": pa.array([0.0, 1.0, 4.5, -0.0, math.nan, math.inf, 1e300, 1700000000000.0, 20240115.0, None, 2.0 ** 70], pa.float64()),
    "flag": pa.array([True, False, None, True, False, True, None, False, True, False, True], pa.bool_()),
    "day": pa.array([dt.date(2024, 1, 15), dt.date(1, 1, 1), dt.date(9999, 12, 31), None, dt.date(1969, 12, 31),
                     dt.date(2024, 2, 29), dt.date(999, 1, 1), dt.date(1970, 1, 1), dt.date(2000, 1, 1),
                     dt.date(2024, 1, 15), dt.date(2024, 1, 15)], pa.date32()),
    "moment": pa.array([dt.datetime(2024, 1, 15, 10, 0, 0, 123456), dt.datetime(1969, 12, 31, 23, 59, 59, 999500),
                        None, dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
                        dt.datetime(1970, 1, 1), dt.datetime(2024, 1, 15), dt.datetime(2024, 1, 15, 23, 59),
                        dt.datetime(1000, 1, 1), dt.datetime(2024, 1, 15), dt.datetime(2024, 1, 15)], pa.timestamp("us")),
    "aware": pa.array([dt.datetime(2024, 1, 15, 10, tzinfo=dt.timezone.utc), None,
                       dt.datetime(2024, 1, 15, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2))),
                       dt.datetime(1, 1, 1, 5, tzinfo=dt.timezone.utc), dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc),
                       dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)] + [None] * 5, pa.timestamp("us", tz="UTC")),
    "raw": pa.array([b"Ann", b"\xff\xfe", "Zoë".encode(), b"  ", b"42", b"\xed\xa0\x80", b"\xc0\x80", None, b"",
                     b"2024-01-15", b"yes"], pa.binary()),
})


@pytest.mark.parametrize("column", [name for name in TYPED.column_names if name != "raw"])
@pytest.mark.parametrize("name", sorted(set(SPECS) - {"format_month_name"}))
def test_typed_columns(column, name):
    vendor = "localytics" if name.startswith("bool") else "gainsight_px" if name == "date" else "apsis_one"
    differential({"x": {"source": column, **SPECS[name]}}, TYPED.select([column]), vendor)


@pytest.mark.parametrize("name", ["string", "int", "date", "bool", "email", "required_default"])
def test_binary_columns_are_decoded_or_rejected_first(name):
    fields = {"x": {"source": "raw", **SPECS[name]}, "n": {"source": "big", "type": "int"}}
    differential(fields, TYPED, vendor="mediarithmics")  # every binary column is checked, as decode_row does


def test_nested_sources_read_structs_and_json():
    people = [{"address": {"city": "Oslo", "zip": 42}, "meta": '{"a": {"b": " 7 "}}'},
              {"address": {"city": " ", "zip": None}, "meta": '{"a": []}'},
              {"address": None, "meta": None},
              {"address": {"city": "São Paulo", "zip": 20240115}, "meta": '{"a": {"b": "x"}}'},
              {"address": {"city": "Kraków", "zip": 7}, "meta": '"text"'}]
    table = pa.table({
        "address": pa.array([p["address"] for p in people], pa.struct([("city", pa.string()), ("zip", pa.int64())])),
        "meta": pa.array([p["meta"] for p in people], pa.string()),
        "address.city": pa.array(["exact", None, "x", "y", "z"], pa.string()),
        "name": pa.array(["a", "b", "c", "d", "e"], pa.string()),
    })
    fields = {
        "city": "address.city",  # a column with that exact name wins, as lookup() does
        "zip": {"source": "address.zip", "type": "int"},
        "zip_date": {"source": "address.zip", "type": "date"},
        "gone": {"source": "address.street", "default": "none"},
        "deeper": {"source": "address.zip.x"},  # an integer is no mapping: nothing there
        "not_nested": {"source": "name.first", "default": "?"},
        "b": {"source": "meta.a.b", "type": "int"},
        "meta": {"source": "meta", "type": "json"},
    }
    compiled, _ = differential(fields, table, casts={"meta": "JSON"})
    assert set(compiled.fallback) == {"b", "meta"}


def test_other_timestamp_units_and_uuids():
    table = pa.table({
        "seconds": pa.array([0, 1_700_000_000, None], pa.timestamp("s")),
        "nanos": pa.array([1_705_312_800_123_456_789, -1, None], pa.timestamp("ns")),
    })
    fields = {"a": {"source": "seconds", "type": "datetime"}, "b": {"source": "nanos", "type": "epoch_ms"},
              "c": {"source": "id", "type": "string"}}
    mapping = FieldMapping(fields, representation=representation_of("apsis_one"))
    connection = duckdb.connect()
    connection.register("arrow_input", table)
    connection.execute("CREATE TABLE t AS SELECT *, uuid() AS id, row_number() OVER () AS __record FROM arrow_input")
    types = {name: kind for name, kind, *_ in connection.execute("DESCRIBE t").fetchall()}
    compiled = compile_mapping(mapping, types, connection)
    got = connection.execute(f"SELECT a, b, c, __reason FROM ({compiled.select_sql('t')}) ORDER BY __record").fetchall()
    ids = [row[0] for row in connection.execute("SELECT CAST(id AS VARCHAR) FROM t ORDER BY __record").fetchall()]
    assert got == [
        ("1970-01-01T00:00:00Z", 1705312800123, ids[0], None),
        ("2023-11-14T22:13:20Z", 0, ids[1], None),  # -1 ns: microseconds, as DuckDB casts (Python has no ns)
        (None, None, ids[2], None),
    ]


def test_a_list_column():
    table = pa.table({"tags": pa.array([["a", " b ", "", None], [], None, ["x"]], pa.list_(pa.string()))})
    differential({"tags": {"source": "tags", "type": "list"}, "first": {"source": "tags", "type": "string"}}, table)


def test_big_integers_beyond_128_bits_are_the_one_known_difference():
    mapping = FieldMapping({"n": {"source": "n", "type": "int"}})
    assert mapping.apply({"n": "1e40"}) == {"n": int(1e40)}  # Python keeps it, exact
    connection = duckdb.connect()
    connection.execute("CREATE TABLE t AS SELECT '1e40' AS n, 0 AS __record")
    compiled = compile_mapping(mapping, {"n": "VARCHAR", "__record": "INTEGER"}, connection)
    [(value, reason)] = connection.execute(f"SELECT n, __reason FROM ({compiled.select_sql('t')})").fetchall()
    assert value is None and reason == f"n: {int(1e40)} is out of range for a 128-bit integer (column 'n')"


def test_non_finite_numbers_in_json_values_are_the_other_known_difference():
    mapping = FieldMapping({"meta": {"source": "meta", "type": "json"}})
    assert mapping.apply({"meta": '{"a": 1e400}'}) == {"meta": {"a": math.inf}}  # the writer rejects it later
    connection = duckdb.connect()
    connection.execute("""CREATE TABLE t AS SELECT '{"a": 1e400}' AS meta, 0 AS __record""")
    compiled = compile_mapping(mapping, {"meta": "VARCHAR", "__record": "INTEGER"}, connection)
    [(value, reason)] = connection.execute(f"SELECT meta, __reason FROM ({compiled.select_sql('t')})").fetchall()
    assert value is None and reason == "meta: a: not a finite number (JSON has no NaN or Infinity) (column 'meta')"


def test_the_whitespace_is_pythons():
    assert WHITESPACE == "".join(chr(code) for code in range(sys.maxunicode + 1) if chr(code).isspace())


def test_patterns_translate_to_re2_or_say_they_cannot():
    assert re2_pattern(r"^a+$") == (r"(?:\x{61})+", False)
    assert re2_pattern(r"\d+")[1] is True  # Python's \d is Unicode: ASCII text only
    assert re2_pattern(r"(?=a)a") is None and re2_pattern(r"(a)\1") is None and re2_pattern("(?i)a") is None


_TEXT = st.one_of(
    st.text(max_size=10),
    st.text(alphabet="0123456789+-.eE_ :/TZtrufalsyno\u00a0\u0664", max_size=12),
    st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,7})?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?\Z"),
    st.from_regex(r"\A\s?[+-]?[0-9]{1,21}(\.[0-9]*)?([eE][+-]?[0-9]{1,3})?\s?\Z"),
    st.from_regex(r"\A[0-9]{1,2}/[0-9]{1,2}/[0-9]{1,5}( [0-9]{1,2}:[0-9]{1,2})?\Z"),
)


@settings(derandomize=True, max_examples=20, deadline=None)
@given(st.lists(_TEXT, min_size=20, max_size=60))
def test_generated_text(texts):
    fields = {name: {"source": "v", **SPECS[name]} for name in
              ("int", "number", "bool", "date", "datetime", "epoch_ms", "date_s", "format", "format_time", "format_compact",
               "email", "string_checked", "digits_pattern")}
    table = pa.table({"v": pa.array(texts, pa.string())})
    for field in fields:  # one field at a time: a row rejected by the first would hide the others
        differential({field: fields[field]}, table, vendor="gainsight_px" if field == "epoch_ms" else "apsis_one")


def test_common_rejects_are_worded_in_sql_without_python():
    """Dirty exports reject in bulk: the reasons of the usual cases never call the Python rule."""
    fields = {
        "n": {"source": "n", "type": "int"},
        "x": {"source": "x", "type": "number"},
        "vip": {"source": "vip", "type": "bool"},
        "born": {"source": "born", "type": "date"},
        "day": {"source": "day", "type": "date", "format": "%d/%m/%Y"},
        "email": {"source": "email", "pattern": r"[^@\s]+@[^@\s]+\.[^@\s]+", "max_length": 20, "choices": None},
        "plan": {"source": "plan", "choices": ["free", "pro"], "max_length": 4},
    }
    bad = {"n": ["4.5", " abc ", "O'Brien"], "x": ["abc", "x y", "--"], "vip": ["maybe", " Nope ", 'say "hi"'],
           "born": ["15/01/2024", "2023-02-30", "20241301"], "day": ["2024-01-15", "31/02/2024", "1/1/1"],
           "email": ["userexample.com", "a@b", "averyveryverylong@example.com"], "plan": ["gold", "enterprise", "it's"]}
    for target, spec in fields.items():
        rows = bad[spec["source"]]
        table = pa.table({spec["source"]: pa.array(rows, pa.string())})
        compiled, _ = differential({target: {k: v for k, v in spec.items() if v is not None}}, table)
        calls = []
        connection = duckdb.connect()
        connection.register("input", table.append_column("__record", pa.array(range(len(rows)), pa.int64())))
        def counted(function):
            return lambda array: calls.append(len(array)) or function(array)

        for name, (function, parameters, returns) in compiled.functions.items():
            compiled.functions[name] = (counted(function), parameters, returns)
        compiled.register(connection)
        reasons = connection.execute(f"SELECT __reason FROM ({compiled.select_sql('input')})").fetchall()
        assert all(reason is not None for (reason,) in reasons) and calls == [], (target, reasons)


@pytest.mark.parametrize("vendor", ["mediarithmics", "apsis_one", "localytics"])
def test_the_benchmark_dirty_data_and_mappings(vendor):
    sys.path.insert(0, str(pathlib.Path(__file__).parents[3] / "benchmarks"))
    import dirty

    differential(dirty.VENDORS[vendor]["mapping"], dirty.dirty_table(0, 4000), vendor)
