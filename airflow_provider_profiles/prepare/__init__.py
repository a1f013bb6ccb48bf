"""The prepare engine: DuckDB in process (see engine.py)."""
