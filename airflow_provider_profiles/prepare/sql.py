"""SQL pieces the engine and the writers share: quoting, text as vendors get it, JSON and CSV."""

from __future__ import annotations

from collections.abc import Iterable


class Columns:
    """The mapped columns a writer builds its SQL from: ``columns(name)`` is the column's SQL
    (NULL when nothing maps it), ``columns.kind(name)`` its DuckDB type."""

    def __init__(self, types: dict[str, str]):
        self.types = types

    def __call__(self, name: str) -> str:
        return ident(name) if name in self.types else "NULL"

    def kind(self, name: str) -> str:
        return self.types.get(name, "VARCHAR")

    def __contains__(self, name: str) -> bool:
        return name in self.types


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def passthrough_select(opened) -> str:
    """No mapping: the input's columns as they are, missing values (blank text, NaN) as NULL, and
    binary values as UTF-8 text (a row with one that is not is rejected, naming its column)."""
    columns, reasons = [], []
    for name in opened.names:
        kind = opened.types[name]
        if kind == "BLOB":
            text = f"TRY(decode({ident(name)}))"
            columns.append(f"{missing_as_null(text, 'VARCHAR', quoted=True)} AS {ident(name)}")
            reasons.append(f"CASE WHEN {ident(name)} IS NOT NULL AND {text} IS NULL "
                           f"THEN py_decode_reason({literal(name)}, {ident(name)}) END")
        else:
            columns.append(f"{missing_as_null(name, kind)} AS {ident(name)}")
    reason = f"coalesce({', '.join(reasons)})" if reasons else "NULL::VARCHAR"
    kept = "".join(f", {ident(name)}" for name in opened.carried)
    return f"SELECT __record{kept}, {', '.join(columns)}, {reason} AS __reason FROM {opened.relation}"


def missing_as_null(name: str, kind: str, quoted: bool = False) -> str:
    """An input column (or an expression, ``quoted``) with the values ``values.is_missing`` calls
    missing as NULL."""
    column = name if quoted else ident(name)
    if kind == "VARCHAR":
        return f"CASE WHEN {is_blank(column)} THEN NULL ELSE {column} END"
    if kind in ("DOUBLE", "FLOAT"):
        return f"CASE WHEN isnan({column}) THEN NULL ELSE {column} END"
    return column


def json_members(members: Iterable[tuple[str, str] | tuple[str, str, str]]) -> str:
    """``"name":value`` pairs joined by commas, each left out when its value is NULL; a member may
    give its value's DuckDB type third (``json_value``)."""
    parts = [json_member(*member) for member in members]
    return f"concat_ws(',', {', '.join(parts)})" if parts else "''"


def json_member(name: str, value: str, kind: str = "") -> str:
    """``"name":value``, NULL when the value is. (``concat`` builds a text in one go, where each
    ``||`` makes a new one: lines are built with it.)"""
    return f"CASE WHEN {value} IS NOT NULL THEN concat({literal(json_key(name))}, {json_value(value, kind)}) END"


def json_value(value: str, kind: str = "") -> str:
    """``to_json(value)``; an integer column's digits are the same text, without the JSON writer."""
    return f"CAST({value} AS VARCHAR)" if kind in INTEGER_TYPES else f"to_json({value})"


def json_object(members: Iterable[tuple[tuple[str, ...], str]]) -> str:
    """A JSON object nested by path, NULL values left out, and a parent only when a child is set."""
    tree: dict = {}
    for path, value in members:
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value

    def build(node: dict) -> tuple[str, list[str]]:
        parts, values = [], []
        for name, child in node.items():
            if isinstance(child, dict):
                inner, leaves = build(child)
                any_set = " OR ".join(f"{leaf} IS NOT NULL" for leaf in leaves)
                parts.append(f"CASE WHEN {any_set} THEN concat({literal(json_key(name) + '{')}, {inner}, '}}') END")
                values += leaves
            else:
                parts.append(json_member(name, child))
                values.append(child)
        return f"concat_ws(',', {', '.join(parts)})", values

    return f"concat('{{', {build(tree)[0]}, '}}')"


def json_key(name: str) -> str:
    import json

    return json.dumps(name, ensure_ascii=False) + ":"


def csv_cell(expression: str, quotable: bool = True) -> str:
    """An RFC 4180 cell, '' for NULL: quoted when it holds a delimiter, quote or line break (which
    a value not ``quotable``, such as a number or a boolean, never does)."""
    if not quotable:
        return f"coalesce({expression}, '')"
    return (f"CASE WHEN regexp_matches({expression}, '[,\"\\r\\n]') "
            f"THEN concat('\"', replace({expression}, '\"', '\"\"'), '\"') ELSE coalesce({expression}, '') END")


def canonical_id(expression: str, kind: str) -> str:
    """``values.canonical_id`` in SQL: text, trimmed, NULL when blank; whole doubles as integers."""
    if kind in ("DOUBLE", "FLOAT") or kind.startswith("DECIMAL"):
        expression = (f"CASE WHEN isfinite({expression}) AND {expression} = floor({expression}) "
                      f"THEN CAST(CAST({expression} AS HUGEINT) AS VARCHAR) ELSE CAST({expression} AS VARCHAR) END")
    elif kind == "BOOLEAN":
        expression = f"CASE WHEN {expression} THEN 'true' WHEN NOT {expression} THEN 'false' END"
    elif kind != "VARCHAR":
        expression = f"CAST({expression} AS VARCHAR)"
    return f"nullif({strip(expression)}, '')"


# the characters Python's str.strip() removes (str.isspace), for trim(), whose default is spaces only
WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
              "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
SPACES = literal(WHITESPACE)

# a regular-expression class of those characters (RE2's \s is ASCII only; Python's is not)
SPACE_CLASS = "".join(f"\\x{{{ord(c):x}}}" for c in WHITESPACE)
INTEGER_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"})
TEXT_OR_INTEGER = INTEGER_TYPES | {"VARCHAR"}
JSON_SCALARS = TEXT_OR_INTEGER | {"BOOLEAN", "DOUBLE"}  # what to_json writes as json.dumps does


def strip(expression: str) -> str:
    """``str.strip()`` in SQL: trim() with a set of characters is slow, so it runs only where an end
    may be whitespace (most values start and end with a visible ASCII character)."""
    untrimmed = literal(f"[^{SPACE_CLASS}](?s:.*[^{SPACE_CLASS}])?")
    return (f"CASE WHEN {visible_ascii(expression)} AND {visible_ascii(f'right({expression}, 1)')} "
            f"THEN {expression} WHEN regexp_full_match({expression}, {untrimmed}) THEN {expression} "
            f"ELSE trim({expression}, {SPACES}) END")


def is_blank(expression: str) -> str:
    """Only whitespace (or nothing); the first character tells, mostly."""
    return (f"CASE WHEN {visible_ascii(expression)} THEN FALSE "
            f"ELSE NOT regexp_matches({expression}, {literal('[^' + SPACE_CLASS + ']')}) END")


def visible_ascii(text: str) -> str:
    """The text's first character is printable ASCII other than space: not whitespace, in any
    sense (``ord`` reads the first character only, without cutting it out: -1 for '')."""
    return f"ord({text}) BETWEEN 33 AND 126"


def stripped_text(expression: str) -> str:
    """``str(value).strip()`` for text and integer columns."""
    return strip(f"CAST({expression} AS VARCHAR)")


def plain_repr(text: str) -> str:
    """Python's ``repr()`` of a str that is printable ASCII without a backslash (either quote
    style, as repr picks it); NULL otherwise."""
    return (
        f"CASE WHEN regexp_full_match({text}, '[\\x{{20}}-\\x{{26}}\\x{{28}}-\\x{{5b}}\\x{{5d}}-\\x{{7e}}]*') "
        f"THEN chr(39) || {text} || chr(39) "
        f"WHEN regexp_full_match({text}, '[\\x{{20}}\\x{{21}}\\x{{23}}-\\x{{5b}}\\x{{5d}}-\\x{{7e}}]*') "
        f"THEN chr(34) || {text} || chr(34) END"
    )


def python_repr(expression: str) -> str:
    """``repr()`` of a text value: in SQL where ``plain_repr`` can, by Python (``py_repr``,
    registered by the engine) otherwise, which only rejected rows reach."""
    return f"coalesce({plain_repr(expression)}, py_repr({expression}))"


def register_functions(connection) -> None:
    """The Python functions the SQL calls for the few values it leaves to Python's own rules."""
    connection.create_function("py_repr", repr, ["VARCHAR"], "VARCHAR", side_effects=False)
    connection.create_function("py_decode_reason", _decode_reason, ["VARCHAR", "BLOB"], "VARCHAR", side_effects=False)


def _decode_reason(column: str, value: bytes) -> str | None:
    from airflow_provider_profiles.prepare.writer import RowRejected
    from airflow_provider_profiles.prepare.values import decode

    try:
        decode(value)
    except ValueError as error:
        return RowRejected(str(error), column).reason
    return None
