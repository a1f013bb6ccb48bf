"""A ``FieldMapping`` compiled to DuckDB SQL: the typed mapping on whole columns, same results.

Each field gets a fast path in SQL for the inputs whose outcome SQL computes exactly (ASCII numbers,
ISO dates of the usual shapes, epoch numbers, true/false words, patterns translated to RE2, simple
strptime formats) and, for the usual rejects of printable ASCII values, Python's reason word for
word. Every other non-missing value (odd inputs such as Unicode digits, ISO week dates or
``1_000``, and rejects SQL cannot word) goes to a Python function registered on the connection
that runs the very ``FieldSpec.value`` on it: the SQL only has to be right about what it accepts.
DuckDB evaluates a CASE branch only for the rows that take it, so Python sees those rows only.

A field whose rule has no fast path at all (lists, JSON, an unusual pattern or date format, typed
input of a rare kind) runs through Python for every non-missing value: right, just slower; such
fields are listed in ``CompiledMapping.fallback`` with the reason, for the engine to log. The
first call of a Python function in a process makes DuckDB import pandas (about 2 s, once).

Rows with a binary column that is not UTF-8 are rejected first, naming the column, as
``values.decode_row`` does. Known differences, both values no vendor can take: an ``int`` beyond
128 bits (``1e300``, a 40-digit id), kept exact by Python, is rejected here ("out of range for a
128-bit integer"); a NaN or infinite number inside a ``json`` / ``list`` value (``1e400``) is
rejected here, by the writer there.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field as dataclass_field
from typing import Any

from airflow_provider_profiles.prepare import values
from airflow_provider_profiles.prepare.writer import RowRejected
from airflow_provider_profiles.prepare.mapping import FieldMapping, FieldSpec
from airflow_provider_profiles.prepare import sql

import re._constants as sre  # the parser of Python's own patterns (3.11+), to translate them
import re._parser as sre_parse

_FLOAT = r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?"  # ASCII float() text, no "_" nor inf/nan
_ISO = (
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?"
)
_ISO_PARTS = ["y", "mo", "d", "h", "mi", "s", "f", "z"]
_HUGEINT_LIMIT = 2**127
_INT_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"}
_WIDE_INT_TYPES = {"UBIGINT", "HUGEINT"}
_FLOAT_TYPES = {"DOUBLE", "FLOAT"}
_TEXT_TYPES = {"VARCHAR"}
_EARLIEST_FAST_MS = -30_610_224_000_000  # 1000-01-01: earlier moments go through Python
_UDF_TYPES = {"HUGEINT": "VARCHAR", "JSON": "VARCHAR"}  # returned as text, cast in SQL
_ids = itertools.count()
# 0 decoded binaries, 1 sources, 2 trimmed text, 3 parses and missing, 4 moments, 5 fast value, 6 Python
_STAGES = 7


@dataclass
class CompiledField:
    target: str
    path: tuple[str, ...]
    value_sql: str
    reason_sql: str
    sql_type: str = "VARCHAR"
    fallback: str | None = None  # why every non-missing value of this field runs in Python


@dataclass
class CompiledMapping:
    fields: list[CompiledField]
    stages: list[list[tuple[str, str]]] = dataclass_field(default_factory=list)
    prefix_reasons: list[str] = dataclass_field(default_factory=list)  # binary columns not UTF-8
    functions: dict[str, tuple[Any, list[str], str]] = dataclass_field(default_factory=dict)

    @property
    def fallback(self) -> dict[str, str]:
        """{target: why} for the fields computed in Python for every non-missing value."""
        return {f.target: f.fallback for f in self.fields if f.fallback}

    def register(self, connection) -> None:
        """Registers the Python fallbacks on ``connection`` (done by compile_mapping when given one)."""
        import duckdb

        for name, (function, parameters, returns) in self.functions.items():
            connection.create_function(
                name, function, [duckdb.sqltype(p) for p in parameters], duckdb.sqltype(returns),
                type="arrow", null_handling="special", side_effects=False,
            )

    def select_sql(self, relation: str, unmapped: Mapping[str, str] = {},  # noqa: B006 (read only)
                   carried: tuple[str, ...] = ()) -> str:
        """Each field AS "target", the first reason (binary columns, then fields in order) AS
        __reason, "__record" and the ``carried`` columns as they are; each stage a subquery so that
        every parse runs once.

        ``unmapped`` ({column: SQL}) keeps input columns too, as ``keep_unmapped`` does: in input
        order, a mapped target of the same name in their place, the other targets after them."""
        query = f"SELECT * FROM {relation}"
        for stage in self.stages:
            if stage:
                columns = ", ".join(f"{expr} AS {sql.ident(name)}" for name, expr in stage)
                query = f"SELECT *, {columns} FROM ({query})"
        reasons = [*self.prefix_reasons, *(f.reason_sql for f in self.fields)]
        reason = f"coalesce({', '.join(reasons)})" if len(reasons) > 1 else reasons[0]
        mapped = {f.target: f.value_sql for f in self.fields}
        columns = {**{name: mapped.get(name, kept) for name, kept in unmapped.items()}, **mapped}
        outputs = ", ".join(f"{value} AS {sql.ident(name)}" for name, value in columns.items())
        kept = "".join(f", {sql.ident(name)}" for name in carried)
        return f'SELECT {outputs}, {reason} AS __reason, "__record"{kept} FROM ({query})'


def compile_mapping(mapping: FieldMapping, types: Mapping[str, str], connection=None) -> CompiledMapping:
    """``mapping`` as SQL over a relation whose columns have the DuckDB ``types`` given."""
    types = {name: _normalise_type(kind) for name, kind in types.items()}
    uid = next(_ids)
    compiled = CompiledMapping(fields=[], stages=[[] for _ in range(_STAGES)])
    base = compiled.stages[0]
    decoded: dict[str, str] = {}
    for column, kind in types.items():
        if kind == "BLOB" and column != "__record":
            name = f"__b{len(decoded)}"
            decoded[column] = sql.ident(name)
            base.append((name, f"TRY(decode({sql.ident(column)}))"))
            function = f"__profiles_{uid}_decode_{len(decoded)}"
            compiled.functions[function] = (_decode_reason(column), ["BLOB"], "VARCHAR")
            reason = f"__b{len(decoded) - 1}_reason"
            compiled.stages[1].append(
                (reason, f"CASE WHEN {sql.ident(column)} IS NOT NULL AND {sql.ident(name)} IS NULL THEN {function}({sql.ident(column)}) END")
            )
            compiled.prefix_reasons.append(sql.ident(reason))
    for index, spec in enumerate(mapping.fields):
        builder = _FieldBuilder(spec, f"__f{index}", f"__profiles_{uid}_field_{index}", types, decoded)
        compiled.fields.append(builder.build())
        for stage, columns in enumerate(builder.stages):
            compiled.stages[stage].extend(columns)
        compiled.functions.update(builder.functions)
    if not compiled.fields:
        raise ValueError("the mapping is empty")
    if connection is not None:
        compiled.register(connection)
    return compiled


# --- one field --------------------------------------------------------------------------------


class _FieldBuilder:
    """Stages of columns (stage 0 holds the decoded binaries; stage 1 the source) and the final
    value / reason of one field."""

    def __init__(self, spec: FieldSpec, prefix: str, function: str, types: dict[str, str], decoded: dict[str, str]):
        self.spec, self.prefix, self.function = spec, prefix, function
        self.types, self.decoded = types, decoded
        self.stages: list[list[tuple[str, str]]] = [[] for _ in range(_STAGES)]
        self.functions: dict[str, tuple[Any, list[str], str]] = {}

    @functools.cached_property
    def trimmed(self) -> str:
        """str.strip() of the text source: trim() only where an end is whitespace (trim is slow)."""
        return self.column(2, "t", sql.strip(self.src))

    def column(self, stage: int, name: str, expr: str) -> str:
        self.stages[stage].append((f"{self.prefix}_{name}", expr))
        return sql.ident(f"{self.prefix}_{name}")

    def build(self) -> CompiledField:
        spec = self.spec
        if spec.is_const:
            sql_type = _type_of_constant(spec.const)
            return CompiledField(spec.target, spec.path, _literal(spec.const, sql_type), "CAST(NULL AS VARCHAR)", sql_type)
        source, kind = self.source()
        category = _category(kind)
        sql_type, fast = self.fast_path(category)
        missing_value, missing_reason = _outcome(spec, {})
        missing_literal = _literal(missing_value, sql_type)
        as_json = sql_type == "JSON" or missing_literal is None
        if missing_literal is None:
            missing_literal = _literal(missing_value, "JSON")
        src = self.column(1, "src", source)
        self.src = src
        rule, fallback = self._fast_rule(fast, src, kind, as_json)
        if as_json:
            sql_type = "JSON"
        missing = self.column(3, "m", _missing_sql(category, src))
        udf_arg, to_row = _udf_argument(src, kind, category, spec.source)
        returns = _UDF_TYPES.get(sql_type, sql_type)
        self.functions[self.function] = (
            _field_function(spec, sql_type, to_row), [_udf_parameter(kind, category)], f"STRUCT(v {returns}, r VARCHAR)"
        )
        value_sql, reason_sql = self._combined(rule, sql_type, missing, missing_literal, missing_reason, udf_arg)
        return CompiledField(spec.target, spec.path, value_sql, reason_sql, sql_type, fallback)

    def _fast_rule(self, fast: Any, src: str, kind: str, as_json: bool) -> tuple[tuple[str, str, str], str | None]:
        """(ok, value, failure) of the field's SQL rule, or, where it has none, a rule that sends every
        value to Python and the note saying why."""
        result = fast(src) if fast is not None else None
        if result is None:  # checks or parse without an SQL form
            spec = self.spec
            fallback = f"no SQL rule for a {spec.type} ({spec.representation}) from {kind.split('@')[0]}" + (
                " with its pattern / format" if spec.pattern is not None or spec.format else ""
            )
            return ("FALSE", "NULL", "NULL"), fallback
        ok, value, failure = result
        return (ok, f"to_json({value})" if as_json else value, failure), None

    def _combined(self, rule: tuple[str, str, str], sql_type: str, missing: str, missing_literal: str,
                  missing_reason: str | None, udf_arg: str) -> tuple[str, str]:
        """The field's value and reject reason: missing, else the SQL rule, else Python's answer."""
        ok, value, failure = rule
        ok = self.column(5, "ok", f"coalesce({ok}, FALSE)") if ok != "FALSE" else "FALSE"
        fast_value = self.column(5, "v", value) if value != "NULL" else "NULL"
        # the reason of the common rejects, worded in SQL as Python words it (NULL: ask Python)
        failure = self.column(5, "fail", failure) if failure != "NULL" else "CAST(NULL AS VARCHAR)"
        python = self.column(
            6, "py", f"CASE WHEN NOT {missing} AND NOT {ok} AND {failure} IS NULL THEN {self.function}({udf_arg}) END"
        )
        from_python = f"CAST({python}.v AS {sql_type})"
        value_sql = (
            f"CASE WHEN {missing} THEN {missing_literal} WHEN {ok} THEN {fast_value} "
            f"WHEN {failure} IS NOT NULL THEN NULL ELSE {from_python} END"
        )
        reason_literal = "CAST(NULL AS VARCHAR)" if missing_reason is None else sql.literal(missing_reason)
        reason_sql = f"CASE WHEN {missing} THEN {reason_literal} WHEN {ok} THEN NULL ELSE coalesce({failure}, {python}.r) END"
        return value_sql, reason_sql

    def source(self) -> tuple[str, str]:
        """The SQL of the source value (binaries decoded, struct fields read) and its type."""
        name = self.spec.source
        if name in self.types:
            kind = self.types[name]
            if name in self.decoded:
                return self.decoded[name], "VARCHAR"
            return _as_python_sees(sql.ident(name), kind)
        first, *rest = name.split(".")
        if first not in self.types:
            return "CAST(NULL AS VARCHAR)", "VARCHAR"  # as lookup(): a value that is not there
        expr, kind = sql.ident(first), self.types[first]
        for depth, part in enumerate(rest):
            if kind == "JSON":  # Python walks the rest of the parsed value, as lookup() does
                return expr, "JSON@" + ".".join(rest[depth:])
            children = _struct_children(kind)
            if children is None or part not in children:  # not a mapping, or no such key
                return "CAST(NULL AS VARCHAR)", "VARCHAR"
            expr, kind = f"struct_extract({expr}, {sql.literal(part)})", children[part]
        return _as_python_sees(expr, kind)

    # Each fast path: (sql type, function(src) -> (ok, value, reason) or None) or (sql type, None).
    def fast_path(self, category: str):
        spec = self.spec
        kind = spec.representation
        if kind == "string":
            return "VARCHAR", self.string_path(category)
        if kind == "int":
            sql_type = "BIGINT" if category == "int" else "HUGEINT"
            return sql_type, self.int_path(category, sql_type)
        if kind == "number":
            if category == "int":
                return "BIGINT", self.int_path(category, "BIGINT")
            return ("DOUBLE", self.number_path(category)) if category in ("text", "float", "bool") else ("JSON", None)
        if kind == "bool":
            sql_type = "VARCHAR" if spec.bool_as == "string" else "BOOLEAN"
            return sql_type, self.bool_path(category, sql_type)
        if kind == "list":
            return "JSON", self.list_path(category)
        if kind == "json":
            return "JSON", None
        sql_type = "BIGINT" if kind == "epoch_ms" else "VARCHAR"
        return sql_type, self.date_path(category, sql_type)

    def checked(self, value: str, sql_type: str, ok: str, failure: str | None = None) -> tuple[str, str, str] | None:
        """(ok, value, reason): ``ok`` the coercion worked and the checks pass; ``reason`` Python's
        reason where SQL is sure of it (``failure`` for the coercion), else NULL."""
        checks = _checks(self.spec, value, sql_type)
        if checks is None:
            return None
        branches = [f"WHEN NOT {passes} THEN {reason}" for passes, reason in checks]
        reason = f"CASE WHEN NOT coalesce({ok}, FALSE) THEN {failure or 'NULL'} {' '.join(branches)} END"
        return (" AND ".join([ok, *(passes for passes, _ in checks)]), value, reason)

    def failed(self, message: str) -> str:
        """A coercion reason as FieldSpec.value words it, around the SQL of ``message``."""
        return f"({sql.literal(self.spec.target + ': ')} || {message} || {sql.literal(f' (column {self.spec.source!r})')})"

    def not_a_float(self, t: str) -> str:
        """float() surely fails: printable ASCII without a digit, and not inf / nan."""
        return (
            f"(regexp_full_match({t}, '[\\x{{20}}-\\x{{7e}}]*') AND NOT regexp_matches({t}, '[0-9]') "
            f"AND NOT regexp_full_match(lower({t}), '[+-]?(inf|infinity|nan)'))"
        )

    def string_path(self, category):
        if category == "text":
            return lambda src: self.checked(src, "VARCHAR", "TRUE")
        if category in ("int", "wide_int"):
            return lambda src: self.checked(f"CAST({src} AS VARCHAR)", "VARCHAR", "TRUE")
        if category == "bool":
            return lambda src: self.checked(f"CASE WHEN {src} THEN 'true' ELSE 'false' END", "VARCHAR", "TRUE")
        if category == "float":  # whole numbers only: repr() of other floats is Python's own
            return lambda src: self.checked(
                f"CAST(TRY_CAST({src} AS HUGEINT) AS VARCHAR)", "VARCHAR",
                f"isfinite({src}) AND {src} = trunc({src}) AND abs({src}) < 1e38",
            )
        return None

    def int_path(self, category, sql_type):
        if category == "text":
            def path(src):
                t = self.trimmed
                digits = self.column(3, "digits", f"regexp_full_match({t}, '[+-]?[0-9]{{1,38}}')")
                number = self.column(
                    4, "dbl", f"CASE WHEN NOT {digits} AND regexp_full_match({t}, {sql.literal(_FLOAT)}) THEN TRY_CAST({t} AS DOUBLE) END"
                )
                whole = f"isfinite({number}) AND {number} = trunc({number}) AND abs({number}) < 1e38"
                value = f"CASE WHEN {digits} THEN CAST({t} AS HUGEINT) WHEN {whole} THEN CAST({number} AS HUGEINT) END"
                fraction = self.failed("'expected an integer, got ' || " + sql.plain_repr(src))
                not_float = self.failed("'could not convert string to float: ' || " + sql.plain_repr(t))
                failure = (
                    f"CASE WHEN isfinite({number}) AND {number} <> trunc({number}) THEN {fraction} "
                    f"WHEN {self.not_a_float(t)} THEN {not_float} END"
                )
                return self.checked(value, sql_type, f"({digits} OR ({whole}))", failure)
            return path
        if category in ("int", "wide_int"):
            return lambda src: self.checked(f"CAST({src} AS {sql_type})", sql_type, "TRUE")
        if category == "float":
            return lambda src: self.checked(
                f"TRY_CAST({src} AS HUGEINT)", sql_type, f"isfinite({src}) AND {src} = trunc({src}) AND abs({src}) < 1e38"
            )
        return None

    def number_path(self, category):
        if category == "text":
            def path(src):
                t = self.trimmed
                number = self.column(3, "dbl", f"CASE WHEN regexp_full_match({t}, {sql.literal(_FLOAT)}) THEN TRY_CAST({t} AS DOUBLE) END")
                not_float = self.failed("'could not convert string to float: ' || " + sql.plain_repr(t))
                failure = f"CASE WHEN {self.not_a_float(t)} THEN {not_float} END"
                return self.checked(number, "DOUBLE", f"isfinite({number})", failure)
            return path
        if category == "float":
            return lambda src: self.checked(f"CAST({src} AS DOUBLE)", "DOUBLE", f"isfinite({src})")
        return None  # booleans are refused: Python says why

    def bool_path(self, category, sql_type):
        def as_type(flag: str) -> str:
            return f"CASE WHEN {flag} THEN 'true' ELSE 'false' END" if sql_type == "VARCHAR" else flag

        if category == "text":
            def path(src):
                word = self.column(3, "word", f"lower({self.trimmed})")
                words = ", ".join(sql.literal(w) for w in sorted(values.TRUE_WORDS | values.FALSE_WORDS))
                trues = ", ".join(sql.literal(w) for w in sorted(values.TRUE_WORDS))
                failure = self.failed("'expected true/false, yes/no or 1/0, got ' || " + sql.plain_repr(src))  # NULL unless ASCII
                return self.checked(as_type(f"({word} IN ({trues}))"), sql_type, f"{word} IN ({words})", failure)
            return path
        if category == "bool":
            return lambda src: self.checked(as_type(src), sql_type, "TRUE")
        if category in ("int", "wide_int", "float"):
            return lambda src: self.checked(as_type(f"({src} = 1)"), sql_type, f"{src} IN (0, 1)")
        return None

    def list_path(self, category):
        """Text split on the separator, items stripped, blank ones left out; JSON lists: Python."""
        separator = self.spec.separator
        if category != "text" or not isinstance(separator, str) or not separator:
            return None

        def path(src):
            strip = f"trim(item, {sql.SPACES})"
            items = f"list_filter(list_transform(string_split({src}, {sql.literal(separator)}), lambda item: {strip}), lambda item: item <> '')"
            return self.checked(items, "JSON", f"NOT starts_with({self.trimmed}, '[')")
        return path

    def date_path(self, category, sql_type):
        spec = self.spec
        if category == "text" and spec.format:
            parts = _strptime_parts(spec.format)
            if parts is None:
                return None
            moment = lambda src: self.formatted_moment(*parts)  # noqa: E731
            failure = lambda: self.failed(  # noqa: E731
                f"{sql.plain_repr(self.trimmed)} || {sql.literal(f' does not match the date format {spec.format!r}')}"
            )
        elif category == "text":
            moment = lambda src: self.text_moment()  # noqa: E731
            failure = self.text_failure
        elif category in ("int", "wide_int"):
            moment = lambda src: self.epoch_moment(src, f"CAST({src} AS HUGEINT)")  # noqa: E731
        elif category == "date":
            moment = lambda src: f"CASE WHEN year({src}) BETWEEN 1 AND 9999 THEN CAST({src} AS TIMESTAMP) END"  # noqa: E731
        elif category == "timestamp":
            moment = lambda src: f"CASE WHEN year({src}) BETWEEN 1 AND 9999 THEN {src} END"  # noqa: E731
        elif category == "timestamptz":
            moment = lambda src: f"CASE WHEN year({src}) BETWEEN 2 AND 9998 THEN timezone('UTC', {src}) END"  # noqa: E731
        else:
            return None

        def path(src):
            ts = self.column(4, "ts", moment(src))
            kind = spec.representation
            if kind == "epoch_ms":
                value = _floor_millis(f"date_trunc('day', {ts})" if spec.type == "date" else ts)
            elif kind == "iso_date" and category == "text" and not spec.format:  # YYYY-MM-DD as it came
                value = f"CASE WHEN {sql.ident(self.prefix + '_plain')} IS NOT NULL THEN {self.trimmed} ELSE strftime({ts}, '%Y-%m-%d') END"
            elif kind == "iso_date":
                value = f"strftime({ts}, '%Y-%m-%d')"
            else:
                value = f"strftime({ts}, '%Y-%m-%dT%H:%M:%SZ')"
            surely = failure() if category == "text" else None
            return self.checked(value, sql_type, f"{ts} IS NOT NULL", surely and f"CASE WHEN {ts} IS NULL THEN {surely} END")
        return path

    def text_failure(self) -> str:
        """The date reasons SQL can be sure of: text that cannot be ISO 8601 (not 4 digits first,
        or a date that does not exist) and YYYYMMDD that is no date."""
        t, iso = self.trimmed, sql.ident(self.prefix + "_iso")
        number = lambda name: f"TRY_CAST(NULLIF({iso}.{name}, '') AS INTEGER)"  # noqa: E731
        plain_parts = [f"TRY_CAST(substr({t}, {start}, {length}) AS INTEGER)" for start, length in ((1, 4), (6, 2), (9, 2))]
        not_iso = (
            f"NOT regexp_full_match({t}, '[+-]?[0-9]+') AND (NOT regexp_matches({t}, '^[0-9]{{4}}') "
            f"OR ({iso}.y <> '' AND NOT {_date_ok(number('y'), number('mo'), number('d'))}) "
            f"OR (regexp_full_match({t}, '[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}') AND NOT {_date_ok(*plain_parts)}))"
        )
        iso_reason = self.failed(f"{sql.plain_repr(t)} || ' is not an ISO 8601 date (YYYY-MM-DD[THH:MM:SS]) nor YYYYMMDD'")
        branches = f"WHEN {not_iso} THEN {iso_reason}"
        if self.spec.unit is None:
            compact = f"regexp_full_match({t}, '[0-9]{{8}}') AND NOT {_date_ok(*_compact_parts(f'TRY_CAST({t} AS BIGINT)'))}"
            no_date = self.failed(sql.plain_repr(t) + " || ' is not a date (YYYYMMDD) nor plausible epoch milliseconds'")
            branches += f" WHEN {compact} THEN {no_date}"
        return f"CASE {branches} END"

    def epoch_moment(self, number: str, as_hugeint: str) -> str:
        """The moment of an epoch number (and of YYYYMMDD integers without a unit), or NULL."""
        unit = self.spec.unit
        millis = f"({as_hugeint} * 1000)" if unit == "s" else as_hugeint
        guessed = "" if unit else f" AND abs({millis}) >= {values._SMALLEST_UNGUESSED_MS}"
        epoch = (
            f"CASE WHEN {millis} BETWEEN {_EARLIEST_FAST_MS} AND {values._MAX_MS}{guessed} "
            f"THEN epoch_ms(CAST({millis} AS BIGINT)) END"
        )
        if unit is not None:
            return epoch
        if self.spec.format:  # Python reads a YYYYMMDD integer as text, with the format: its rule
            return f"CASE WHEN {number} BETWEEN 10000000 AND 99999999 THEN NULL ELSE {epoch} END"
        return f"CASE WHEN {number} BETWEEN 10000000 AND 99999999 THEN {_compact_date(number)} ELSE {epoch} END"

    def text_moment(self) -> str:
        t = self.trimmed
        src = sql.ident(self.prefix + "_src")
        integer = self.column(3, "int", f"CASE WHEN regexp_full_match({t}, '[+-]?[0-9]{{1,20}}') THEN CAST({t} AS HUGEINT) END")
        # the usual YYYY-MM-DD (years 1000-9999): DuckDB's own date cast, the general parse skipped
        is_plain = f"regexp_full_match({t}, '[1-9][0-9]{{3}}-[0-9]{{2}}-[0-9]{{2}}')"
        plain = self.column(3, "plain", f"CASE WHEN {is_plain} THEN TRY_CAST({t} AS DATE) END")
        parts = f"regexp_extract({t}, {sql.literal('^' + _ISO + '$')}, {_names(_ISO_PARTS)})"
        iso = self.column(3, "iso", f"CASE WHEN NOT {is_plain} THEN {parts} END")
        # int() of the untrimmed text, for an epoch number, refuses the separators \x1c-\x1f
        epoch = self.epoch_moment("0", f"CASE WHEN NOT regexp_matches({src}, '[\\x{{1c}}-\\x{{1f}}]') THEN {integer} END")
        if self.spec.unit is None:  # "+20240115" is an epoch number: YYYYMMDD is 8 bare digits
            from_integer = f"CASE WHEN regexp_full_match({t}, '[0-9]{{8}}') THEN {_compact_date(integer)} ELSE {epoch} END"
        else:
            from_integer = epoch
        part = lambda name: f"{iso}.{name}"  # noqa: E731
        number = lambda name: f"TRY_CAST(NULLIF({part(name)}, '') AS INTEGER)"  # noqa: E731
        clock = lambda name: f"coalesce({number(name)}, 0)"  # noqa: E731
        hours, minutes = f"CAST(substr({part('z')}, 2, 2) AS INTEGER)", f"CAST(substr({part('z')}, 5, 2) AS INTEGER)"
        offset = (
            f"CASE WHEN {part('z')} IN ('', 'Z') THEN 0 WHEN {hours} <= 23 AND {minutes} <= 59 "
            f"THEN (CASE WHEN {part('z')}[1] = '-' THEN -1 ELSE 1 END) * ({hours} * 60 + {minutes}) END"
        )
        # years 2-9998 only: Python's conversion to UTC overflows at the ends, its rule says how
        valid = (
            f"{number('y')} BETWEEN 2 AND 9998 AND {_date_ok(number('y'), number('mo'), number('d'))} "
            f"AND {clock('h')} <= 23 AND {clock('mi')} <= 59 AND {clock('s')} <= 59"
        )
        micros = f"coalesce(TRY_CAST(rpad({part('f')}, 6, '0') AS BIGINT), 0)"
        from_iso = (
            f"CASE WHEN {valid} THEN make_date({number('y')}, {number('mo')}, {number('d')}) "
            f"+ make_time({clock('h')}, {clock('mi')}, {clock('s')}) + to_microseconds({micros}) - to_minutes({offset}) END"
        )
        return (
            f"CASE WHEN {plain} IS NOT NULL THEN CAST({plain} AS TIMESTAMP) "
            f"WHEN {integer} IS NOT NULL THEN {from_integer} ELSE {from_iso} END"
        )

    def formatted_moment(self, pattern: str, groups: list[str]) -> str:
        t = self.trimmed
        found = self.column(3, "fmt", f"regexp_extract({t}, {sql.literal('^(?:' + pattern + ')$')}, {_names(groups)})")
        number = lambda name: f"TRY_CAST(NULLIF({found}.{name}, '') AS INTEGER)" if name in groups else "0"  # noqa: E731
        ascii_only = f"strlen({t}) = length({t})"  # Python's \d and \s match Unicode too
        valid = f"{ascii_only} AND {number('year')} >= 1 AND {number('second')} <= 59 AND " + _date_ok(
            number("year"), number("month"), number("day")
        )
        return (
            f"CASE WHEN {valid} THEN make_date({number('year')}, {number('month')}, {number('day')}) "
            f"+ make_time({number('hour')}, {number('minute')}, {number('second')}) END"
        )


def _date_ok(year: str, month: str, day: str) -> str:
    """Whether the date exists (year 1-9999), without raising: TRY() makes DuckDB evaluate a whole
    vector row by row as soon as one value fails, and invalid dates are in most vectors."""
    leap = f"({year} % 4 = 0 AND ({year} % 100 <> 0 OR {year} % 400 = 0))"
    days = f"CASE WHEN {month} = 2 THEN CASE WHEN {leap} THEN 29 ELSE 28 END WHEN {month} IN (4, 6, 9, 11) THEN 30 ELSE 31 END"
    return f"coalesce({year} BETWEEN 1 AND 9999 AND {month} BETWEEN 1 AND 12 AND {day} BETWEEN 1 AND {days}, FALSE)"


def _compact_parts(number: str) -> tuple[str, str, str]:
    whole = f"CAST({number} AS BIGINT)"
    return (f"{whole} // 10000", f"{whole} // 100 % 100", f"{whole} % 100")


def _compact_date(number: str) -> str:
    """The midnight of a YYYYMMDD integer, or NULL if that is no date."""
    parts = _compact_parts(number)
    return f"CASE WHEN {_date_ok(*parts)} THEN CAST(make_date({', '.join(parts)}) AS TIMESTAMP) END"


# --- pieces -----------------------------------------------------------------------------------


def _floor_millis(timestamp: str) -> str:
    """Whole milliseconds since the epoch, rounded down as Python's ``// timedelta(ms=1)`` (DuckDB's
    epoch_ms() rounds to the nearest)."""
    micros = f"epoch_us({timestamp})"
    return f"(({micros} - (({micros} % 1000) + 1000) % 1000) // 1000)"


def _outcome(spec: FieldSpec, row: Mapping[str, Any]) -> tuple[Any, str | None]:
    try:
        return spec.value(row), None
    except RowRejected as error:
        return None, error.reason


def json_default(value: Any) -> Any:
    """Dates inside a json / list value as ISO text (as the writers' JSON encoding sends them)."""
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _field_function(spec: FieldSpec, sql_type: str, to_row):
    """The Python rule of one field over an Arrow array: STRUCT(v, r) per value."""
    import pyarrow as pa

    arrow_type = {"BIGINT": pa.int64(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_()}.get(sql_type, pa.string())
    def encode(value):
        if value is None:
            return None
        if sql_type == "JSON":
            return values.json_text(value, default=json_default)
        if sql_type == "HUGEINT":
            if not -_HUGEINT_LIMIT <= value < _HUGEINT_LIMIT:
                raise ValueError(f"{value} is out of range for a 128-bit integer")
            return str(value)
        return value

    def function(array):
        out, reasons = [], []
        for raw in array.to_pylist():
            try:
                value = encode(spec.value(to_row(raw)))
                reason = None
            except RowRejected as error:
                value, reason = None, error.reason
            except ValueError as error:  # beyond what the SQL type holds
                value, reason = None, f"{spec.target}: {error} (column {spec.source!r})"
            out.append(value)
            reasons.append(reason)
        return pa.StructArray.from_arrays([pa.array(out, arrow_type), pa.array(reasons, pa.string())], names=["v", "r"])

    return function


def _decode_reason(column: str):
    import pyarrow as pa

    def function(array):
        reasons = []
        for raw in array.to_pylist():
            try:
                values.decode(raw)
                reasons.append(None)
            except ValueError as error:
                reasons.append(RowRejected(str(error), column).reason)
        return pa.array(reasons, pa.string())

    return function


def _udf_parameter(kind: str, category: str) -> str:
    if category in ("wide_int", "json", "nested_json") or kind in ("HUGEINT", "UHUGEINT", "UBIGINT"):
        return "VARCHAR"
    return kind


def _udf_argument(src: str, kind: str, category: str, source: str):
    """The argument of the Python rule, and how its value becomes the row ``FieldSpec.value`` reads."""
    if category == "wide_int":
        return f"CAST({src} AS VARCHAR)", lambda raw: {source: None if raw is None else int(raw)}
    if category == "json":
        return f"CAST({src} AS VARCHAR)", lambda raw: {source: None if raw is None else json.loads(raw)}
    if category == "nested_json":  # a JSON value with the rest of the path to walk
        parts = kind.split("@", 1)[1].split(".")
        return f"CAST({src} AS VARCHAR)", lambda raw: {source: None if raw is None else _walk(json.loads(raw), parts)}
    return src, lambda raw: {source: raw}


def _as_python_sees(expr: str, kind: str) -> tuple[str, str]:
    """Timestamps of other units as microseconds (Python's datetime), UUIDs as their text."""
    if kind in ("TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS"):
        return f"CAST({expr} AS TIMESTAMP)", "TIMESTAMP"
    if kind == "UUID":
        return f"CAST({expr} AS VARCHAR)", "VARCHAR"
    return expr, kind


def _walk(value: Any, parts: list[str]) -> Any:
    """The rest of mapping.lookup's walk, inside a parsed JSON value."""
    for part in parts:
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _missing_sql(category: str, source: str) -> str:
    """values.is_missing in SQL, for the values it can see (the rest: Python decides)."""
    if category == "text":
        return f"({source} IS NULL OR {sql.is_blank(source)})"
    if category == "float":
        return f"({source} IS NULL OR isnan({source}))"
    if category == "list":
        return f"({source} IS NULL OR len({source}) = 0)"
    return f"({source} IS NULL)"


def _value_repr_sql(value: str, sql_type: str) -> str:
    return {
        "VARCHAR": sql.plain_repr(value),
        "BIGINT": f"CAST({value} AS VARCHAR)",
        "HUGEINT": f"CAST({value} AS VARCHAR)",
        "BOOLEAN": f"CASE WHEN {value} THEN 'True' ELSE 'False' END",
    }.get(sql_type, "NULL")


def _checks(spec: FieldSpec, value: str, sql_type: str) -> list[tuple[str, str]] | None:
    """FieldSpec.check as (SQL predicate that holds only when Python's check passes, Python's
    reason when it surely fails, else NULL) in Python's order; None if one cannot be written."""
    checks = []
    prefix = sql.literal(spec.target + ": ")
    shown = _value_repr_sql(value, sql_type)
    if spec.max_length is not None and sql_type == "VARCHAR":
        checks.append((
            f"length({value}) <= {int(spec.max_length)}",
            f"{prefix} || CAST(length({value}) AS VARCHAR) || {sql.literal(f' characters; at most {spec.max_length} allowed')}",
        ))
    if spec.pattern is not None:
        text = {
            "VARCHAR": value,
            "BIGINT": f"CAST({value} AS VARCHAR)",
            "HUGEINT": f"CAST({value} AS VARCHAR)",
            "BOOLEAN": f"CASE WHEN {value} THEN 'True' ELSE 'False' END",
        }.get(sql_type)
        translated = re2_pattern(spec.pattern.pattern, spec.pattern.flags)
        if text is None or translated is None:
            return None
        pattern, needs_ascii = translated
        match = f"regexp_full_match({text}, {sql.literal(pattern)})"
        reason = f"{prefix} || {shown} || {sql.literal(f' does not match {spec.pattern.pattern!r}')}"
        if needs_ascii:
            ascii_text = f"strlen({text}) = length({text})"
            checks.append((f"({ascii_text} AND {match})", f"CASE WHEN {ascii_text} THEN {reason} END"))
        else:
            checks.append((match, reason))
    if spec.choices is not None:
        allowed = _choice_literals(spec.choices, sql_type)
        if allowed is None:
            return None
        listed = sql.literal(f" is not one of {sorted(map(str, spec.choices))}")
        checks.append((f"{value} IN ({', '.join(allowed)})" if allowed else "FALSE", f"{prefix} || {shown} || {listed}"))
    return checks


def _choice_literals(choices: set, sql_type: str) -> list[str] | None:
    if sql_type == "VARCHAR":
        return [sql.literal(c) for c in sorted(c for c in choices if isinstance(c, str))]
    if sql_type in ("BIGINT", "HUGEINT"):
        numbers = {int(c) for c in choices if isinstance(c, (int, float)) and math.isfinite(c) and int(c) == c}
        return [f"CAST('{n}' AS {sql_type})" for n in sorted(numbers) if -_HUGEINT_LIMIT <= n < _HUGEINT_LIMIT]
    if sql_type == "BOOLEAN":
        return [flag for flag, test in (("TRUE", True), ("FALSE", False)) if test in choices]
    if sql_type == "DOUBLE":
        numbers = set()
        for c in choices:
            if isinstance(c, (int, float)):
                try:
                    if float(c) == c:
                        numbers.add(float(c))
                except OverflowError:
                    pass
        return [f"CAST('{n!r}' AS DOUBLE)" for n in sorted(numbers)]
    return None


# --- Python regular expressions as RE2 ----------------------------------------------------------

_ASCII_CLASSES = {
    sre.CATEGORY_DIGIT: [(0x30, 0x39)],
    sre.CATEGORY_SPACE: [(0x09, 0x0D), (0x1C, 0x20)],
    sre.CATEGORY_WORD: [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
}


def _complement(ranges):
    out, start = [], 0
    for low, high in ranges:
        if low > start:
            out.append((start, low - 1))
        start = high + 1
    if start <= 0x7F:
        out.append((start, 0x7F))
    return out


for _name, _negated in (("DIGIT", "NOT_DIGIT"), ("SPACE", "NOT_SPACE"), ("WORD", "NOT_WORD")):
    _ASCII_CLASSES[getattr(sre, "CATEGORY_" + _negated)] = _complement(_ASCII_CLASSES[getattr(sre, "CATEGORY_" + _name)])


class _Untranslatable(Exception):
    pass


def re2_pattern(pattern: str, flags: int = 0) -> tuple[str, bool] | None:
    """An RE2 pattern whose full match is Python's ``re.fullmatch`` of ``pattern``, and whether
    that holds for ASCII text only (``\\d``, ``\\s``, ``\\w``, ``\\b``: Unicode in Python); None if
    the pattern uses what RE2 lacks or this does not translate (flags, look-arounds, references)."""
    try:
        parsed = sre_parse.parse(pattern, flags)
    except Exception:
        return None
    all_flags = parsed.state.flags
    if all_flags & (re.IGNORECASE | re.MULTILINE | re.LOCALE):
        return None
    state = {"ascii": False, "dotall": bool(all_flags & re.DOTALL), "unicode": not all_flags & re.ASCII}
    items = list(parsed)
    # with fullmatch, a leading ^ / \A and a trailing $ / \Z hold anyway
    while items and items[0] == (sre.AT, sre.AT_BEGINNING) or items and items[0] == (sre.AT, sre.AT_BEGINNING_STRING):
        items.pop(0)
    while items and items[-1] in ((sre.AT, sre.AT_END), (sre.AT, sre.AT_END_STRING)):
        items.pop()
    try:
        text = _translate(items, state)
    except _Untranslatable:
        return None
    return text, state["ascii"] and state["unicode"]


def _char(code: int) -> str:
    return "\\x{%x}" % code


def _translate(items, state) -> str:
    out = []
    for op, arg in items:
        if op is sre.LITERAL:
            out.append(_char(arg))
        elif op is sre.NOT_LITERAL:
            out.append(f"[^{_char(arg)}]")
        elif op is sre.ANY:
            out.append("(?s:.)" if state["dotall"] else "[^\\n]")
        elif op is sre.IN:
            out.append(_translate_class(arg, state))
        elif op is sre.BRANCH:
            out.append("(?:" + "|".join(_translate(list(alt), state) for alt in arg[1]) + ")")
        elif op is sre.SUBPATTERN:
            group, add_flags, del_flags, sub = arg
            if add_flags or del_flags:
                raise _Untranslatable
            inner = _translate(list(sub), state)
            out.append(f"({inner})" if group is not None else f"(?:{inner})")
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            low, high, sub = arg
            if low > 1000 or (high is not sre.MAXREPEAT and high > 1000):
                raise _Untranslatable
            inner = "(?:" + _translate(list(sub), state) + ")"
            if high is sre.MAXREPEAT:
                out.append(inner + ("*" if low == 0 else "+" if low == 1 else "{%d,}" % low))
            else:
                out.append(inner + "{%d,%d}" % (low, high))
        elif op is sre.AT and arg in (sre.AT_BOUNDARY, sre.AT_NON_BOUNDARY):
            state["ascii"] = True
            out.append("\\b" if arg is sre.AT_BOUNDARY else "\\B")
        else:
            raise _Untranslatable
    return "".join(out)


def _translate_class(items, state) -> str:
    negate, parts = False, []
    for op, arg in items:
        if op is sre.NEGATE:
            negate = True
        elif op is sre.LITERAL:
            parts.append(_char(arg))
        elif op is sre.RANGE:
            parts.append(f"{_char(arg[0])}-{_char(arg[1])}")
        elif op is sre.CATEGORY and arg in _ASCII_CLASSES:
            state["ascii"] = True
            parts.extend(f"{_char(low)}-{_char(high)}" for low, high in _ASCII_CLASSES[arg])
        else:
            raise _Untranslatable
    if not parts:
        raise _Untranslatable
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


def _strptime_parts(format: str) -> tuple[str, list[str]] | None:
    """RE2 for ``datetime.strptime(text, format)`` with %Y %m %d (and %H %M %S) and literal
    non-letters: (pattern, group names); None for any other format."""
    import _strptime

    directives = re.findall(r"%(.)", format)
    if sorted(set(directives)) != sorted(directives) or not {"Y", "m", "d"} <= set(directives):
        return None
    if not set(directives) <= {"Y", "m", "d", "H", "M", "S"} or re.search(r"[A-Za-z]", re.sub(r"%.", "", format)):
        return None
    try:
        python_pattern = _strptime._TimeRE_cache.pattern(format)
    except Exception:
        return None
    translated = re2_pattern(python_pattern)
    if translated is None:
        return None
    names = {"Y": "year", "m": "month", "d": "day", "H": "hour", "M": "minute", "S": "second"}
    return translated[0], [names[group] for group in re.compile(python_pattern).groupindex]


# --- SQL text -----------------------------------------------------------------------------------


def _names(names: list[str]) -> str:
    return "[" + ", ".join(sql.literal(n) for n in names) + "]"


def _normalise_type(kind: str) -> str:
    text = str(kind).strip()
    upper = text.upper()
    aliases = {"TEXT": "VARCHAR", "STRING": "VARCHAR", "INT": "INTEGER", "INT8": "BIGINT", "LONG": "BIGINT",
               "REAL": "FLOAT", "FLOAT8": "DOUBLE", "BOOL": "BOOLEAN", "TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE",
               "BYTEA": "BLOB", "BINARY": "BLOB", "VARBINARY": "BLOB", "DATETIME": "TIMESTAMP"}
    if upper == "VARCHAR" or upper.startswith("VARCHAR("):
        return "VARCHAR"
    return aliases.get(upper, upper if not upper.startswith(("STRUCT", "MAP", "UNION")) and "[" not in upper else text)


def _category(kind: str) -> str:
    if "@" in kind:
        return "nested_json"
    if kind in _TEXT_TYPES:
        return "text"
    if kind in _INT_TYPES:
        return "int"
    if kind in _WIDE_INT_TYPES:
        return "wide_int"
    if kind in _FLOAT_TYPES:
        return "float"
    if kind == "BOOLEAN":
        return "bool"
    if kind == "DATE":
        return "date"
    if kind == "TIMESTAMP":
        return "timestamp"
    if kind == "TIMESTAMP WITH TIME ZONE":
        return "timestamptz"
    if kind == "JSON":
        return "json"
    if kind.endswith("[]") or kind.upper().startswith("LIST"):
        return "list"
    return "other"


def _struct_children(kind: str) -> dict[str, str] | None:
    if not kind.upper().startswith("STRUCT"):
        return None
    import duckdb

    parsed = duckdb.sqltype(kind)
    return {name: _normalise_type(str(child)) for name, child in parsed.children}


def _type_of_constant(value: Any) -> str:
    if value is None or isinstance(value, str):
        return "VARCHAR"
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "BIGINT" if -(2**63) <= value < 2**63 else "HUGEINT" if -_HUGEINT_LIMIT <= value < _HUGEINT_LIMIT else "JSON"
    if isinstance(value, float):
        return "DOUBLE"
    return "JSON"


def _literal(value: Any, sql_type: str) -> str | None:
    """``value`` as an SQL literal of ``sql_type``, or None if that type cannot hold it exactly."""
    if value is None:
        return f"CAST(NULL AS {sql_type})"
    if sql_type == "JSON":
        try:
            return f"CAST({sql.literal(json.dumps(value, ensure_ascii=False, separators=(',', ':')))} AS JSON)"
        except (TypeError, ValueError):
            return f"CAST({sql.literal(json.dumps(str(value)))} AS JSON)"
    if sql_type == "VARCHAR" and isinstance(value, str):
        return sql.literal(value)
    if sql_type == "BOOLEAN" and isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if sql_type in ("BIGINT", "HUGEINT") and isinstance(value, int) and not isinstance(value, bool):
        limit = 2**63 if sql_type == "BIGINT" else _HUGEINT_LIMIT
        return f"CAST('{int(value)}' AS {sql_type})" if -limit <= value < limit else None
    if sql_type == "DOUBLE" and type(value) is float:
        return f"CAST('{value!r}' AS DOUBLE)"
    return None
