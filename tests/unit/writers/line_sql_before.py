"""The writers' line SQL as it was before it was rewritten for speed (commit 676cd25), kept as
the reference ``test_line_sql_bytes.py`` holds the new SQL to, byte for byte.

Only the line-building parts are frozen here; the value expressions they build on (``sql.strip``,
``sql.canonical_id``, ``sql.python_repr``, the Gainsight PX conversions) are the package's own.
When a format changes on purpose, change or drop its reference here.
"""

from __future__ import annotations

from airflow_provider_profiles.prepare import sql
from airflow_provider_profiles.writers import apsis_one, gainsight_px, localytics, mediarithmics


def json_members(members) -> str:
    parts = [f"CASE WHEN {value} IS NOT NULL THEN {sql.literal(sql.json_key(name))} || to_json({value}) END"
             for name, value in members]
    return f"concat_ws(',', {', '.join(parts)})" if parts else "''"


def json_object(members) -> str:
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
                parts.append(f"CASE WHEN {any_set} THEN {sql.literal(sql.json_key(name) + '{')} || {inner} || '}}' END")
                values += leaves
            else:
                parts.append(f"CASE WHEN {child} IS NOT NULL THEN {sql.literal(sql.json_key(name))} || to_json({child}) END")
                values.append(child)
        return f"concat_ws(',', {', '.join(parts)})", values

    return "'{' || " + build(tree)[0] + " || '}'"


def csv_cell(expression: str) -> str:
    return (f"CASE WHEN {expression} IS NULL THEN '' WHEN regexp_matches({expression}, '[,\"\\r\\n]') "
            f"THEN '\"' || replace({expression}, '\"', '\"\"') || '\"' ELSE {expression} END")


def mediarithmics_identifier(columns) -> tuple[str, str]:
    text = {name: sql.stripped_text(columns(name)) for name in (*mediarithmics.IDENTIFIER_FIELDS, "compartment_id")}
    members = f"""CASE WHEN {columns('user_account_id')} IS NOT NULL THEN
              (CASE WHEN {columns('compartment_id')} IS NOT NULL THEN '"compartment_id":' || to_json({text['compartment_id']}) || ',' ELSE '' END)
              || '"user_account_id":' || to_json({text['user_account_id']})
           WHEN {columns('email_hash')} IS NOT NULL THEN '"email_hash":' || to_json({text['email_hash']})
           ELSE '"user_agent_id":' || to_json({text['user_agent_id']}) END"""
    found = ", ".join(f"CASE WHEN {columns(name)} IS NOT NULL THEN '{name}' END" for name in mediarithmics.IDENTIFIER_FIELDS)
    count = " + ".join(f"CAST({columns(name)} IS NOT NULL AS INTEGER)" for name in mediarithmics.IDENTIFIER_FIELDS)
    reason = f"""CASE WHEN {count} = 0 THEN 'no user identifier: set one of user_account_id (+ compartment_id), email_hash, user_agent_id'
                      WHEN {count} > 1 THEN 'only one user identifier per line is allowed, found ' || concat_ws(', ', {found}) END"""
    return members, reason


def mediarithmics_profile(writer, columns) -> tuple[str, str]:
    members, reason = mediarithmics_identifier(columns)
    if writer.operation == "DELETE":
        return f"""'{{' || {members} || ',"operation":"DELETE"}}' || chr(10)""", reason
    profile = [name for name in columns.types if name not in writer._reserved]
    values = json_members((name, columns(name)) for name in profile)
    empty = " AND ".join(f"{columns(name)} IS NULL" for name in profile) or "true"
    infinite = [f"CASE WHEN isinf({columns(name)}) THEN 'value cannot be written as JSON: user_profile.{name}: "
                "not a finite number (JSON has no NaN or Infinity)' END"
                for name in profile if columns.kind(name) == "DOUBLE"]
    line = (f"""'{{' || {members} || ',"operation":"UPSERT","update_strategy":' || to_json({sql.literal(writer.update_strategy)})"""
            f""" || ',"user_profile":{{' || {values} || '}}}}' || chr(10)""")
    reason = f"""coalesce({reason}, CASE WHEN {empty} THEN 'user_profile: UPSERT needs at least one profile property' END
                          {''.join(', ' + check for check in infinite)})"""
    return line, reason


def localytics_changes(writer, columns) -> tuple[str, str]:
    customer = columns(writer.identifier_field)
    customer_text = sql.stripped_text(customer)
    changes, checks = [], []
    most = localytics.MAX_STRING
    for column, spec in writer.attributes.items():
        value = columns(column)
        changes.append(f"""CASE WHEN {value} IS NOT NULL THEN '{{"op":"assign","attr":' || to_json({sql.literal(spec.attr)})
                           || ',"value":' || to_json({value}) || '}}' END""")
        if columns.kind(column) == "VARCHAR":
            checks.append(f"""WHEN length({value}) > {most} THEN {sql.literal(column + ': string of ')} || length({value})
                              || ' characters; Localytics accepts at most {most}'""")
        elif columns.kind(column) in ("HUGEINT", "UBIGINT"):
            checks.append(f"""WHEN NOT {value} BETWEEN -9223372036854775808 AND 9223372036854775807
                              THEN {sql.literal(column + ': ')} || CAST({value} AS VARCHAR) || ' is out of range for a 64-bit integer'""")
    name = sql.literal(writer.identifier_field + ": ")
    reason = f"""CASE WHEN {customer} IS NULL THEN {name} || 'customer id is empty'
                      WHEN length({customer_text}) > {most} THEN {name} || 'customer id is ' || length({customer_text})
                           || ' characters; at most {most} allowed'
                      {' '.join(checks)}
                      WHEN {' AND '.join(f'{columns(c)} IS NULL' for c in writer.attributes)}
                      THEN 'no attribute to change: every mapped value is empty' END"""
    line = f"""'{{"customer_id":' || to_json({customer_text}) || ',"changes":[' || concat_ws(',', {', '.join(changes)}) || ']}}' || chr(10)"""
    return line, reason


def apsis_one_csv(writer, columns) -> tuple[str, str]:
    def cell(name: str) -> str:
        value = columns(name)
        if columns.kind(name) == "BOOLEAN":
            return f"CASE WHEN {value} THEN 'true' WHEN NOT {value} THEN 'false' ELSE '' END"
        return f"coalesce(CAST({value} AS VARCHAR), '')"

    key = sql.strip(cell(writer.keyspace_field))
    field = sql.literal(writer.keyspace_field + ": ")
    shape = {apsis_one.EMAIL_KEYSPACE: (f"^[^@{sql.SPACE_CLASS}]+@[^@{sql.SPACE_CLASS}]+\\.[^@{sql.SPACE_CLASS}]+$", "not an email address: "),
             apsis_one.MOBILE_KEYSPACE: ("^\\+?[0-9]{6,15}$", "not a mobile number (digits, optional leading +): ")}.get(writer.keyspace)
    reason = f"CASE WHEN {key} = '' THEN {field} || 'missing keyspace value'"
    if shape:
        reason += f" WHEN NOT regexp_matches({key}, {sql.literal(shape[0])}) THEN {field} || {sql.literal(shape[1])} || {sql.python_repr(key)}"
    cells = [csv_cell(key if name == writer.keyspace_field else cell(name)) for name in writer.columns]
    return f"concat_ws(',', {', '.join(cells)}) || chr(10)", reason + " END"


def gainsight_px_records(writer, columns) -> tuple[str, str, str]:
    members, exact = [], []
    for field, column in writer.field_mapping.items():
        kind = "id" if field == writer.id_field else writer.field_types.get(field, "string")
        value, fits = gainsight_px._converted_sql(columns(column), kind)
        if field == "email":
            fits = f"({fits}) AND contains({value}, '@')"
        if field in gainsight_px._RANGES:
            low, high = gainsight_px._RANGES[field]
            fits = f"({fits}) AND TRY_CAST({sql.strip(columns(column))} AS DOUBLE) BETWEEN {low} AND {high}"  # CAST crashed
        required = field == writer.id_field or field in gainsight_px.REQUIRED_FIELDS.get(writer.entity, ())
        exact.append(f"({value} IS NOT NULL AND {fits})" if required else f"({columns(column)} IS NULL OR ({fits}))")
        members.append((tuple(field.split(".")), value))
    return json_object(members) + " || chr(10)", "NULL::VARCHAR", " AND ".join(exact)


def line_sql(writer, columns):
    """The reference for ``writer.line_sql(columns)``: None where the writer had no SQL."""
    if writer.line_sql(columns) is None:
        return None
    build = {mediarithmics.UserProfileWriter: mediarithmics_profile, localytics.ProfileChangesWriter: localytics_changes,
             apsis_one.ApsisOneCsvWriter: apsis_one_csv, gainsight_px.GainsightPXRecordFormat: gainsight_px_records}
    return build[type(writer)](writer, columns)
