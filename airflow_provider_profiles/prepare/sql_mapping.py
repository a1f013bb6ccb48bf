"""DEV STUB (replaced by the mapsql helper's module): plain strings only."""
from __future__ import annotations
from dataclasses import dataclass
from airflow_provider_profiles.prepare.sql import ident, literal


@dataclass
class CompiledField:
    target: str
    path: tuple
    value_sql: str
    reason_sql: str


@dataclass
class CompiledMapping:
    fields: list

    def select_sql(self, relation):
        values = ", ".join(f"{f.value_sql} AS {ident(f.target)}" for f in self.fields)
        reasons = ", ".join(f.reason_sql for f in self.fields)
        return f"SELECT __record, {values}, coalesce({reasons}) AS __reason FROM {relation}"


def compile_mapping(mapping, types, connection=None):
    fields = []
    for f in mapping.fields:
        if f.is_const:
            v = "NULL" if f.const is None else literal(str(f.const))
            fields.append(CompiledField(f.target, f.path, v, "NULL::VARCHAR"))
            continue
        src = ident(f.source)
        v = f"CASE WHEN trim({src}) = '' THEN NULL ELSE {src} END"
        r = (f"CASE WHEN ({v}) IS NULL THEN {literal(f.target + ': required value is empty (column ' + repr(f.source) + ')')} END"
             if f.required else "NULL::VARCHAR")
        fields.append(CompiledField(f.target, f.path, v, r))
    return CompiledMapping(fields)
